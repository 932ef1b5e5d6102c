package e2e

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// labelled reads a labelled sample (e.g. `chatfleet_breaker_state{provider="openai"}`).
func labelled(t *testing.T, base, series string) (float64, bool) {
	t.Helper()
	res, err := httpc.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			_, _ = fmt.Sscan(v, &f)
			return f, true
		}
	}
	return 0, false
}

func providerEnv(fake *llmfake.Fake, extra map[string]string) map[string]string {
	env := map[string]string{
		"CHATFLEET_LLM_PROVIDER": "openai", "CHATFLEET_LLM_BASE_URL": fake.URL(),
		"CHATFLEET_LLM_MODEL": "fake-model", "CHATFLEET_LLM_API_KEY": llmfake.Key,
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// Upstream down, three worker processes: the breaker opens fleet-wide after 5
// upstream calls in total; while open, jobs finish degraded without touching
// the upstream; after the open period one probe closes it and real replies
// resume, on every worker.
func TestBreakerOpensFleetWideAndRecovers(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		fake := llmfake.NewOpenAI(t)
		fake.Always(llmfake.Step{Status: 500, Message: "upstream on fire"})
		const openFor = 5 * time.Second // the jobs "while open" must fit in it on a loaded machine
		apis, workers := fleet(t, rd, 1, 3, providerEnv(fake, map[string]string{
			"CHATFLEET_BREAKER_FAILURES": "5", "CHATFLEET_BREAKER_OPEN_FOR": openFor.String(), "CHATFLEET_MAX_RETRIES": "0",
		}))
		c := client.New(apis[0].URL())
		ctx := context.Background()
		run := func(i int) client.Job {
			t.Helper()
			sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("brk-%d", i), Message: fmt.Sprintf("hello %d", i)})
			if err != nil {
				t.Fatal(err)
			}
			j, err := c.Wait(ctx, sub.JobID)
			if err != nil {
				t.Fatal(err)
			}
			return j
		}
		state := func(w *testkit.Proc) float64 {
			v, _ := labelled(t, w.URL(), `chatfleet_breaker_state{provider="openai"}`)
			return v
		}
		waitAll := func(want float64) {
			t.Helper()
			// An announcement takes milliseconds; 5 s is room for a loaded
			// machine, and shorter than the open period that it must see.
			deadline := time.Now().Add(5 * time.Second)
			for _, w := range workers {
				for state(w) != want {
					if time.Now().After(deadline) {
						t.Fatalf("%s reports breaker state %v, want %v within 5s", w.Name, state(w), want)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}

		// One job at a time, spread over the workers by the queue.
		for i := range 8 {
			j := run(i)
			if j.Status != "succeeded" || j.Result == nil || !j.Result.Degraded {
				t.Fatalf("job %d during the outage: %+v", i, j)
			}
		}
		if got := fake.Calls(); got != 5 {
			t.Fatalf("%d upstream calls before the breaker stopped them, want 5 for the whole fleet", got)
		}
		waitAll(1)
		trippedAt := time.Now()

		// While open: degraded at once, the upstream untouched.
		for i := 8; i < 12; i++ {
			if j := run(i); !j.Result.Degraded {
				t.Fatalf("job %d while open: %+v", i, j)
			}
		}
		if got := fake.Calls(); got != 5 {
			t.Fatalf("the upstream was called while the breaker was open: %d calls", got)
		}

		// The upstream recovers; after the open period one probe closes the breaker.
		fake.Always(llmfake.Step{})
		time.Sleep(time.Until(trippedAt.Add(openFor + 300*time.Millisecond)))
		j := run(100)
		if j.Status != "succeeded" || j.Result.Degraded || j.Result.Content != llmfake.Reply("hello 100") || j.Result.Provider != "openai" {
			t.Fatalf("first job after the open period: %+v %+v", j, j.Result)
		}
		if got := fake.Calls(); got != 6 {
			t.Fatalf("%d upstream calls, want one probe (6)", got)
		}
		waitAll(0)
		for i := 101; i < 104; i++ {
			if j := run(i); j.Result.Degraded {
				t.Fatalf("job %d after recovery: %+v", i, j.Result)
			}
		}
	})
}

// A 400 from the upstream fails the job at once with the upstream's message,
// after exactly one call: no retry, no fallback, no breaker count. Re-run
// from the dead letter list, it runs again: a small job, and one whose body
// travels by reference (over 64 KiB), which its record keeps for the re-run.
func TestUpstream400FailsAtOnce(t *testing.T) {
	schema := map[string]any{"type": "object", "description": strings.Repeat("d", 40<<10)}
	for _, tools := range [][]client.Tool{nil, {{Type: "function", Function: client.Function{Name: "a", Parameters: schema}},
		{Type: "function", Function: client.Function{Name: "b", Parameters: schema}}}} {
		t.Run(fmt.Sprintf("%d tools", len(tools)), func(t *testing.T) { upstream400FailsAtOnce(t, tools) })
	}
}

func upstream400FailsAtOnce(t *testing.T, tools []client.Tool) {
	const msg = "too long"
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	fake.Always(llmfake.Step{Status: 400, Message: "messages: this model's maximum context length is 8192 tokens"})
	fallback := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{
		"CHATFLEET_LLM_FALLBACKS": "openai:other-model@" + fallback.URL(),
	}))
	c := client.New(apis[0].URL())
	sub, err := c.Submit(context.Background(), client.SubmitRequest{SessionID: "bad-request", Message: msg, Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	j, err := c.Wait(context.Background(), sub.JobID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != "failed" || j.Error == nil || !strings.Contains(j.Error.Message, "maximum context length") || j.Attempts != 1 {
		t.Fatalf("job %+v %+v", j, j.Error)
	}
	if fake.Calls() != 1 || fallback.Calls() != 0 {
		t.Fatalf("upstream calls %d, fallback calls %d; want 1 and 0", fake.Calls(), fallback.Calls())
	}

	// The failed job is in the dead letter list with its error, and runs again
	// on request once the cause is fixed.
	env := map[string]string{"CHATFLEET_REDIS_URL": rd.URL()}
	var code int
	var out, errOut string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, out, errOut = runCheck(t, workerBin, env, "jobs", "archived")
		if strings.Contains(out, sub.JobID) || time.Now().After(deadline) {
			break
		}
	}
	if code != 0 || !strings.Contains(out, sub.JobID) || !strings.Contains(out, "maximum context length") {
		t.Fatalf("jobs archived: exit %d\n%s\n%s", code, out, errOut)
	}
	fake.Always(llmfake.Step{})
	if code, out, errOut = runCheck(t, workerBin, env, "jobs", "rerun", sub.JobID); code != 0 {
		t.Fatalf("jobs rerun: exit %d\n%s\n%s", code, out, errOut)
	}
	j, err = c.Wait(context.Background(), sub.JobID)
	if err != nil || j.Status != "succeeded" || j.Result.Content != llmfake.Reply(msg) || j.Attempts != 1 {
		t.Fatalf("re-run job: %+v %v", j, err)
	}
	if code, _, _ = runCheck(t, workerBin, env, "jobs", "rerun", sub.JobID); code == 0 {
		t.Fatal("re-running a succeeded job must fail")
	}
}

// The primary failing, the fallback answers with the key that its entry's
// #FALLBACK_KEY names (the fake refuses any other); the job names the
// provider that did.
func TestFallbackAnswersWhenThePrimaryFails(t *testing.T) {
	rd := testkit.StartRedis(t)
	primary := llmfake.NewOpenAI(t)
	primary.Always(llmfake.Step{Status: 503})
	fallback := llmfake.NewAnthropic(t)
	fallback.ExpectKey("anthropic-test-key")
	apis, _ := fleet(t, rd, 1, 1, providerEnv(primary, map[string]string{
		"CHATFLEET_LLM_FALLBACKS": "anthropic:fake-claude@" + fallback.URL() + "#FALLBACK_KEY",
		"FALLBACK_KEY":            "anthropic-test-key",
	}))
	c := client.New(apis[0].URL())
	sub, err := c.Submit(context.Background(), client.SubmitRequest{SessionID: "fallback", Message: "anyone there"})
	if err != nil {
		t.Fatal(err)
	}
	j, err := c.Wait(context.Background(), sub.JobID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != "succeeded" || j.Result.Provider != "anthropic" || j.Result.Content != llmfake.Reply("anyone there") || j.Result.Degraded {
		t.Fatalf("job %s: result %+v, error %+v", j.Status, j.Result, j.Error)
	}
	if primary.Calls() != 1 || fallback.Calls() != 1 {
		t.Fatalf("calls: primary %d, fallback %d", primary.Calls(), fallback.Calls())
	}
	if keys := fallback.Keys(); len(keys) != 1 || keys[0] != "anthropic-test-key" {
		t.Fatalf("the fallback got keys %q, want FALLBACK_KEY's", keys)
	}
}

// A wrong key is the operator's fault, not the moment's: the upstream's 401
// fails the job at once with provider_rejected naming the status, after one
// call, with no retry and no fallback, and does not count for the breaker.
// The upstream's message (it quotes part of the key) reaches the worker's
// log, never the tenant.
func TestWrongProviderKeyFailsTheJobAtOnce(t *testing.T) {
	rd := testkit.StartRedis(t)
	primary := llmfake.NewOpenAI(t)
	primary.ExpectKey("sk-the-key-the-upstream-knows")
	primary.ExpectRefusals()
	fallback := llmfake.NewAnthropic(t)
	apis, workers := fleet(t, rd, 1, 1, providerEnv(primary, map[string]string{
		"CHATFLEET_LLM_FALLBACKS": "anthropic:fake-claude@" + fallback.URL() + "#FALLBACK_KEY",
		"FALLBACK_KEY":            llmfake.Key,
		"CHATFLEET_MAX_RETRIES":   "3",
		// One counted failure would open the breaker and keep the second
		// job from the upstream.
		"CHATFLEET_BREAKER_FAILURES": "1", "CHATFLEET_BREAKER_OPEN_FOR": "5m",
	}))
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 1; i <= 2; i++ {
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("wrong-key-%d", i), Message: "hello"})
		if err != nil {
			t.Fatal(err)
		}
		j, err := c.Wait(ctx, sub.JobID)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status != "failed" || j.Error == nil || j.Error.Code != "provider_rejected" || !strings.Contains(j.Error.Message, "HTTP 401") || j.Attempts != 1 {
			t.Fatalf("job %d: %s after %d attempts, error %+v, result %+v; want failed, provider_rejected (HTTP 401), 1 attempt", i, j.Status, j.Attempts, j.Error, j.Result)
		}
		if strings.Contains(j.Error.Message, "API key") || strings.Contains(j.Error.Message, "sk-") {
			t.Fatalf("job %d: the tenant sees the upstream's message: %q", i, j.Error.Message)
		}
		if primary.Calls() != i || fallback.Calls() != 0 {
			t.Fatalf("after job %d: primary %d calls, fallback %d; want %d and 0", i, primary.Calls(), fallback.Calls(), i)
		}
	}
	refused := primary.Refusals()
	if len(refused) != 2 || !strings.Contains(refused[0], "401 POST /v1/chat/completions: Incorrect API key") {
		t.Fatalf("the upstream refused %q; want both calls for their key", refused)
	}
	if keys := primary.Keys(); keys[0] != llmfake.Key {
		t.Fatalf("the primary got key %q, want CHATFLEET_LLM_API_KEY's", keys[0])
	}
	waitForLog(t, workers[0], "Incorrect API key", 5*time.Second)
}

// Tenants never see an upstream's address, transport error or raw body: the
// job's error, its stream's retry and error events carry a stable code and a
// plain message (the detail is in the worker's logs).
func TestProviderDetailsDoNotReachTenants(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	fake.SetPlan(func(call int) llmfake.Step {
		if call == 1 {
			return llmfake.Step{CutAfter: 2} // breaks off mid-reply: a retry event
		}
		return llmfake.Step{Status: 502, Message: "<html><body>502 Bad Gateway from 10.1.2.3</body></html>"}
	})
	apis, workers := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{
		// the fallback's address refuses connections: "dial tcp 127.0.0.1:1"
		"CHATFLEET_LLM_FALLBACKS": "openai:other@http://127.0.0.1:1/v1", "CHATFLEET_MAX_RETRIES": "1",
		"CHATFLEET_ON_ALL_PROVIDERS_DOWN": "fail",
	}))
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "leaks", Message: "tell me more"})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	if err := c.Stream(ctx, sub.JobID, client.StreamOptions{}, func(ev client.Event) error {
		seen = append(seen, fmt.Sprintf("%s %s %+v", ev.Type, ev.Reason, ev.Error))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	j, err := c.Get(ctx, sub.JobID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != "failed" || j.Error == nil || j.Error.Code != "providers_unavailable" {
		t.Fatalf("job: %+v %+v", j, j.Error)
	}
	shown := strings.Join(seen, "\n") + "\n" + j.Error.Code + " " + j.Error.Message
	if !strings.Contains(shown, "retry") {
		t.Fatalf("no retry event: %s", shown)
	}
	for _, secret := range []string{"127.0.0.1", "10.1.2.3", "dial tcp", "html", "EOF", "http://"} {
		if strings.Contains(shown, secret) {
			t.Errorf("tenants see %q:\n%s", secret, shown)
		}
	}
	// The operators' logs keep the detail.
	if logs := strings.Join(workers[0].Logs(), "\n"); !strings.Contains(logs, "10.1.2.3") || !strings.Contains(logs, "127.0.0.1:1") {
		t.Errorf("the worker's logs lack the upstream detail")
	}
}
