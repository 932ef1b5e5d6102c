package e2e

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// modelsFile is a models file: alpha on two deployments of different rpm
// (weights 3:1 by default), falling back to beta on a third upstream.
func modelsFile(east, west, beta *llmfake.Fake, extra string) string {
	return fmt.Sprintf(`default_model: alpha
models:
  - name: alpha
    deployments:
      - id: alpha-east
        provider: openai
        model: gpt-4o
        base_url: %s
        api_key_env: KEY_EAST
        rpm: 3000
      - id: alpha-west
        provider: openai
        model: gpt-4o
        base_url: %s
        api_key_env: KEY_WEST
        rpm: 1000
    fallbacks: [beta]
    price: {input: 2.5, output: 10}
  - name: beta
    deployments:
      - provider: openai
        model: llama3.1
        base_url: %s
%s`, east.URL(), west.URL(), beta.URL(), extra)
}

// Two public models on three OpenAI-compatible upstreams, through the
// official SDK: the list is the file's; alpha's traffic splits by weight;
// a failing deployment loses its traffic to the other after the breaker's
// count of failures, with no failed job; with both down the fallback
// answers; an unknown name is refused before anything is queued; a dated
// snapshot's answer is priced by the public name; an edit of the file is
// served within 10 s and a broken one is refused while the old list stays.
func TestModelsFileRoutesAcrossDeployments(t *testing.T) {
	rd := testkit.StartRedis(t)
	east, west, beta := llmfake.NewOpenAI(t), llmfake.NewOpenAI(t), llmfake.NewOpenAI(t)
	snapshot := llmfake.Step{AnswerAs: "gpt-4o-2024-08-06"}
	east.Always(snapshot)
	west.Always(snapshot)
	// Each deployment takes only the key its api_key_env names; beta names
	// none, as a local server does, and must get none.
	east.ExpectKey("key-east")
	west.ExpectKey("key-west")
	beta.ExpectKey("")
	path := filepath.Join(t.TempDir(), "models.yaml")
	if err := os.WriteFile(path, []byte(modelsFile(east, west, beta, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	const failures = 3
	apis, workers := fleet(t, rd, 1, 1, map[string]string{
		"CHATFLEET_MODELS_FILE": path, "KEY_EAST": "key-east", "KEY_WEST": "key-west",
		"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_BREAKER_FAILURES": fmt.Sprint(failures), "CHATFLEET_BREAKER_OPEN_FOR": "5m",
	})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ask := func(model string) (*openai.ChatCompletion, error) {
		return oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello " + model)}})
	}
	listed := func() []string {
		page, err := oa.Models.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, m := range page.Data {
			names = append(names, m.ID)
		}
		return names
	}

	if got := listed(); !slices.Equal(got, []string{"alpha", "beta"}) {
		t.Fatalf("models.list: %v, want the file's alpha and beta", got)
	}
	if m, err := oa.Models.Get(ctx, "beta"); err != nil || m.ID != "beta" {
		t.Fatalf("models.retrieve beta: %+v %v", m, err)
	}

	// By weight: rpm 3000 and 1000 are 75 % and 25 %.
	const n = 80
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 6)
	for range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := ask("alpha")
			if err == nil && c.Model != "alpha" {
				err = fmt.Errorf("answer's model %q, want the public name alpha", c.Model)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	share := float64(east.Calls()) / float64(east.Calls()+west.Calls())
	t.Logf("split: east %d, west %d (%.0f %% east)", east.Calls(), west.Calls(), 100*share)
	if east.Calls()+west.Calls() != n || beta.Calls() != 0 || math.Abs(share-0.75) > 0.15 {
		t.Fatalf("east %d, west %d, beta %d calls for %d requests: want %d in all, 75 %% ± 15 to east", east.Calls(), west.Calls(), beta.Calls(), n, n)
	}

	// Priced by the public name: the snapshot's name has no price.
	today := time.Now().UTC().Format(time.DateOnly)
	u := do(t, http.MethodGet, apis[0].URL()+"/api/v1/usage?from="+today+"&to="+today, nil, map[string]string{"Authorization": "Bearer " + keyAcme})
	rows, _ := u.Body["data"].([]any)
	priced := false
	for _, r := range rows {
		row, _ := r.(map[string]any)
		if row["model"] != "alpha" {
			t.Fatalf("usage row %v: every answer was alpha's", row)
		}
		p, _ := row["prompt_tokens"].(float64)
		c, _ := row["completion_tokens"].(float64)
		cost, _ := row["cost_usd"].(float64)
		want := (p*2.5 + c*10) / 1e6
		if cost <= 0 || math.Abs(cost-want) > 1e-9 {
			t.Fatalf("usage row %v: cost %g, want %g (tokens × alpha's price)", row, cost, want)
		}
		priced = true
	}
	if !priced {
		t.Fatalf("usage %s: no row", u.Raw)
	}
	if v, _ := labelled(t, workers[0].URL(), `chatfleet_llm_cost_usd_total{model="alpha",provider="alpha-east"}`); v <= 0 {
		t.Fatalf("the cost metric of alpha-east under alpha is %v, want the public model's price counted", v)
	}

	// West fails: its traffic moves to east within each attempt.
	west.Always(llmfake.Step{Status: 500, Message: "west is down"})
	westBefore, eastBefore := west.Calls(), east.Calls()
	for i := range 12 {
		c, err := ask("alpha")
		if err != nil || c.Model != "alpha" {
			t.Fatalf("request %d with west down: %+v %v", i, c, err)
		}
	}
	if calls := west.Calls() - westBefore; calls > failures {
		t.Fatalf("the failing deployment got %d calls, more than the breaker's %d failures", calls, failures)
	}
	if east.Calls()-eastBefore != 12 {
		t.Fatalf("east answered %d of 12", east.Calls()-eastBefore)
	}

	// Both down: beta answers, under its own name.
	east.Always(llmfake.Step{Status: 500, Message: "east is down"})
	for i := range 6 {
		c, err := ask("alpha")
		if err != nil || c.Model != "beta" || c.Choices[0].Message.Content != llmfake.Reply("hello alpha") {
			t.Fatalf("request %d with alpha down: %+v %v; want beta's answer", i, c, err)
		}
	}

	for i, k := range beta.Keys() {
		if k != "" {
			t.Fatalf("beta's call %d carried a key (%d chars) though its deployment names none", i+1, len(k))
		}
	}

	// An unknown name: 404 model_not_found, and no job.
	jobsBefore := len(rd.Client().Keys(ctx, "*job:*").Val())
	callsBefore := east.Calls() + west.Calls() + beta.Calls()
	_, err := ask("gamma")
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusNotFound || oe.Code != "model_not_found" || oe.Param != "model" {
		t.Fatalf("unknown model: %v, want 404 model_not_found", err)
	}
	if jobs := len(rd.Client().Keys(ctx, "*job:*").Val()); jobs != jobsBefore || east.Calls()+west.Calls()+beta.Calls() != callsBefore {
		t.Fatalf("an unknown model left %d keys of jobs (was %d)", jobs, jobsBefore)
	}

	// An edit that adds gamma (served by beta's upstream) is listed and
	// served within 10 s.
	gamma := "  - name: gamma\n    deployments:\n      - provider: openai\n        model: llama3.1\n        base_url: " + beta.URL() + "\n"
	if err := os.WriteFile(path, []byte(modelsFile(east, west, beta, gamma)), 0o600); err != nil {
		t.Fatal(err)
	}
	edited := time.Now()
	for !slices.Contains(listed(), "gamma") {
		if time.Since(edited) > 10*time.Second {
			t.Fatal("gamma is not listed 10 s after the edit")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		c, err := ask("gamma")
		if err == nil && c.Model == "gamma" {
			break
		}
		if time.Since(edited) > 10*time.Second {
			t.Fatalf("gamma is not served 10 s after the edit: %+v %v", c, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("gamma listed and served %v after the edit", time.Since(edited).Round(time.Millisecond))

	// A broken edit (an unknown field) is refused, logged with the entry and
	// the field, and the old list stays.
	broken := strings.Replace(modelsFile(east, west, beta, gamma), "rpm: 1000", "rpm: 1000\n        rpn: 5", 1)
	if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range append(apis, workers...) {
		waitForLog(t, p, "rpn", 10*time.Second)
	}
	if got := listed(); !slices.Equal(got, []string{"alpha", "beta", "gamma"}) {
		t.Fatalf("after a broken edit: %v, want the old list", got)
	}
	if c, err := ask("gamma"); err != nil || c.Model != "gamma" {
		t.Fatalf("after a broken edit gamma: %+v %v", c, err)
	}
}

// waitForLog waits until one of p's log lines holds s.
func waitForLog(t *testing.T, p *testkit.Proc, s string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, l := range p.Logs() {
			if strings.Contains(l, s) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s logged nothing about %q within %v", p.Name, s, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A deployment that answers 429 loses its traffic to the other deployment
// of its model while it asks the fleet to wait: no job fails or waits for
// it, and it is not called again within its Retry-After.
func TestA429DeploymentLosesTrafficToTheOther(t *testing.T) {
	rd := testkit.StartRedis(t)
	limited, other := llmfake.NewOpenAI(t), llmfake.NewOpenAI(t)
	limited.Always(llmfake.Step{Status: 429, Message: "Rate limit reached for requests", RetryAfter: "60"})
	path := filepath.Join(t.TempDir(), "models.yaml")
	file := fmt.Sprintf(`models:
  - name: alpha
    deployments:
      - {id: limited, provider: openai, model: m, base_url: %q, api_key_env: UPSTREAM_KEY, weight: 9}
      - {id: other, provider: openai, model: m, base_url: %q, api_key_env: UPSTREAM_KEY, weight: 1}
`, limited.URL(), other.URL())
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_MODELS_FILE": path, "UPSTREAM_KEY": llmfake.Key, "CHATFLEET_API_KEYS": keysEnv()})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	for i := range 20 {
		c, err := oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "alpha",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(fmt.Sprintf("hello %d", i))}})
		if err != nil || c.Model != "alpha" {
			t.Fatalf("request %d: %+v %v", i, c, err)
		}
	}
	took := time.Since(start)
	t.Logf("20 answers in %v; the 429 deployment was called %d times, the other %d", took.Round(time.Millisecond), limited.Calls(), other.Calls())
	if limited.Calls() != 1 || other.Calls() != 20 {
		t.Fatalf("the 429 deployment was called %d times, the other %d: want 1 and 20", limited.Calls(), other.Calls())
	}
}
