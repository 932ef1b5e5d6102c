package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// The job list pages through 250 jobs of a tenant exactly: each once, newest
// first, none of another tenant's; filters narrow it.
func TestJobListPagesExactly(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv()})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	acme, beta := client.New(apis[0].URL(), client.WithAPIKey(keyAcme)), client.New(apis[0].URL(), client.WithAPIKey(keyBeta))
	mine := map[string]bool{}
	for i := range 250 {
		sub, err := acme.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("list-%d", i%7), Message: fmt.Sprintf("m%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		mine[sub.JobID] = true
		if i%25 == 0 {
			if _, err := beta.Submit(ctx, client.SubmitRequest{SessionID: "other", Message: "not acme's"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	auth := map[string]string{"Authorization": "Bearer " + keyAcme}
	seen := map[string]bool{}
	var last time.Time
	cursor, pages := "", 0
	for {
		r := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs?limit=37&cursor="+cursor, nil, auth)
		if r.Status != http.StatusOK {
			t.Fatalf("page %d: %d %s", pages, r.Status, r.Raw)
		}
		pages++
		for _, x := range r.Body["data"].([]any) {
			j := x.(map[string]any)
			id := j["job_id"].(string)
			if !mine[id] || seen[id] {
				t.Fatalf("page %d lists %s (acme's: %v, seen before: %v)", pages, id, mine[id], seen[id])
			}
			seen[id] = true
			at, _ := time.Parse(time.RFC3339Nano, j["created_at"].(string))
			if !last.IsZero() && at.After(last) {
				t.Fatalf("page %d: %s created %s after the one before it (%s)", pages, id, at, last)
			}
			last = at
		}
		next, _ := r.Body["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	if len(seen) != 250 || pages != 7 {
		t.Fatalf("%d jobs over %d pages, want 250 over 7", len(seen), pages)
	}
	r := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs?session_id=list-3&limit=100", nil, auth)
	if n := len(r.Body["data"].([]any)); n != 36 {
		t.Fatalf("session list-3 has %d jobs listed, want 36", n)
	}
	for _, q := range []string{"?limit=0", "?limit=101", "?status=done", "?cursor=garbage", "?session_id=a%20b"} {
		if r := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs"+q, nil, auth); r.Status != http.StatusBadRequest {
			t.Fatalf("list%s: %d %s", q, r.Status, r.Raw)
		}
	}
}

// A tenant with a budget of tokens a day: bursts of concurrent submits over
// 2 API nodes are accepted until the budget is spent, then refused with 429
// insufficient_quota (as the OpenAI SDK knows it), before anything is
// written. Each submit reserves its estimate (more than this budget: the
// output cap of a job that names none is 512 tokens), so a job is admitted
// only while none is in flight, and the overshoot is at most one job's cost.
func TestBudgetRefusesOnceSpent(t *testing.T) {
	rd := testkit.StartRedis(t)
	const budget = 300
	apis, _ := fleet(t, rd, 2, 1, map[string]string{
		"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_TENANT_BUDGETS": fmt.Sprintf("acme:tokens=%d/day,soft=50%%", budget), "CHATFLEET_SIM_TOKENS": "10",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if n := metric(t, apis[0].URL(), "chatfleet_tenants_over_soft_limit"); n != 0 {
		t.Fatalf("%v tenants over their soft limit before any job", n)
	}
	// A job submitted with an Idempotency-Key while under the budget.
	acme := map[string]string{"Authorization": "Bearer " + keyAcme, "Idempotency-Key": "first"}
	first := do(t, http.MethodPost, apis[0].URL()+"/api/v1/chat/jobs", map[string]any{"session_id": "first", "message": "spend some tokens"}, acme)
	if first.Status != http.StatusAccepted {
		t.Fatalf("first submit: %d %s", first.Status, first.Raw)
	}
	j, err := client.New(apis[0].URL(), client.WithAPIKey(keyAcme)).Wait(ctx, first.Body["job_id"].(string))
	if err != nil || j.Usage == nil {
		t.Fatalf("first job: %+v %v", j, err)
	}
	var lastAcceptedFrom, spent, costliest int // spend when the last burst with accepted jobs began; spend now; the costliest job
	spent = j.Usage.PromptTokens + j.Usage.CompletionTokens
	costliest = spent
	refused := false
	for burst := 0; burst < 60; burst++ {
		from := spent
		var mu sync.Mutex
		var ids []string
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := client.New(apis[i%2].URL(), client.WithAPIKey(keyAcme))
				sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("b%d-%d", burst, i), Message: "spend some tokens"})
				mu.Lock()
				defer mu.Unlock()
				var ae *client.Error
				switch {
				case errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests && ae.Code == "insufficient_quota":
					refused = true
				case err != nil:
					t.Errorf("submit: %v", err)
				default:
					ids = append(ids, sub.JobID)
				}
			}()
		}
		wg.Wait()
		if len(ids) == 0 {
			break // the whole burst refused
		}
		lastAcceptedFrom = from
		for _, id := range ids {
			j, err := client.New(apis[0].URL(), client.WithAPIKey(keyAcme)).Wait(ctx, id)
			if err != nil || j.Usage == nil {
				t.Fatalf("job %s: %+v %v", id, j, err)
			}
			n := j.Usage.PromptTokens + j.Usage.CompletionTokens
			spent += n
			costliest = max(costliest, n)
		}
	}
	if !refused {
		t.Fatalf("never refused; %d tokens spent against a budget of %d", spent, budget)
	}
	// Accepted while under the budget, refused once at or over it: the
	// overshoot is at most the last accepted job's cost.
	if lastAcceptedFrom >= budget || spent < budget || spent-budget > costliest {
		t.Fatalf("refused with %d tokens spent (%d when the last accepted burst began, costliest job %d), budget %d", spent, lastAcceptedFrom, costliest, budget)
	}
	t.Logf("refused at %d tokens of a %d budget: the last accepted job began at %d and overshot by %d", spent, budget, lastAcceptedFrom, spent-budget)
	// The OpenAI SDK sees OpenAI's own error: 429, insufficient_quota.
	oa := openai.NewClient(option.WithBaseURL(apis[1].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	_, err = oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "sim", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("one more")}})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusTooManyRequests || oe.Code != "insufficient_quota" || oe.Type != "insufficient_quota" {
		t.Fatalf("the SDK got %v", err)
	}
	// Another tenant is not held back.
	if _, err := client.New(apis[0].URL(), client.WithAPIKey(keyBeta)).Submit(ctx, client.SubmitRequest{SessionID: "free", Message: "hi"}); err != nil {
		t.Fatal(err)
	}
	r := do(t, http.MethodPost, apis[0].URL()+"/api/v1/chat/jobs", map[string]any{"session_id": "after", "message": "x"}, map[string]string{"Authorization": "Bearer " + keyAcme})
	if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" || !strings.Contains(r.Raw, `"reset_at"`) {
		t.Fatalf("jobs API over budget: %d %s", r.Status, r.Raw)
	}
	if r := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs?session_id=after", nil, map[string]string{"Authorization": "Bearer " + keyAcme}); len(r.Body["data"].([]any)) != 0 {
		t.Fatalf("a refused submit left a job: %s", r.Raw)
	}
	// The key's request sent again gets its job back: nothing new is spent.
	again := do(t, http.MethodPost, apis[1].URL()+"/api/v1/chat/jobs", map[string]any{"session_id": "first", "message": "spend some tokens"}, acme)
	if again.Status != http.StatusOK || again.Body["job_id"] != first.Body["job_id"] {
		t.Fatalf("idempotent replay over budget: %d %s (first %s)", again.Status, again.Raw, first.Raw)
	}
	u := do(t, http.MethodGet, apis[0].URL()+"/api/v1/usage", nil, map[string]string{"Authorization": "Bearer " + keyAcme})
	b, _ := u.Body["budget"].(map[string]any)
	if b == nil || b["unit"] != "tokens" || b["limit"] != float64(budget) || b["spent"] != float64(spent) ||
		b["soft_limit"] != float64(budget)/2 || b["over_soft_limit"] != true {
		t.Fatalf("usage's budget: %s (spent %d)", u.Raw, spent)
	}
	// Both API processes report the tenant over its soft limit, and log it once.
	for _, a := range apis {
		deadline := time.Now().Add(15 * time.Second)
		for metric(t, a.URL(), "chatfleet_tenants_over_soft_limit") != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: chatfleet_tenants_over_soft_limit never reached 1", a.Name)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if n := strings.Count(strings.Join(a.Logs(), "\n"), "tenant passed its budget's soft limit"); n != 1 {
			t.Errorf("%s logged the soft limit %d times", a.Name, n)
		}
	}
}

// A burst cannot overrun a budget: 80 concurrent /v1/chat/completions
// requests (max_tokens 16) against 600 tokens a day spend at most the budget
// plus one request's worth, each submit reserving its estimate before it is
// queued; the rest are refused with 429 insufficient_quota, none with a 5xx.
// The spend equals what the jobs reported, and no reservation is left once
// they have ended.
func TestBudgetHoldsUnderABurst(t *testing.T) {
	rd := testkit.StartRedis(t)
	const budget, requests = 600, 80
	apis, _ := fleet(t, rd, 2, 1, map[string]string{
		"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_TENANT_BUDGETS": fmt.Sprintf("acme:tokens=%d/day", budget),
		"CHATFLEET_SIM_TOKENS": "40", "CHATFLEET_SIM_LATENCY": "200ms",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var mu sync.Mutex
	var served, refused, costliest, reported int
	var wg sync.WaitGroup
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			oa := openai.NewClient(option.WithBaseURL(apis[i%2].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
			resp, err := oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "sim", MaxTokens: openai.Int(16),
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(fmt.Sprintf("count the words of request %d", i))}})
			mu.Lock()
			defer mu.Unlock()
			var oe *openai.Error
			switch {
			case err == nil:
				served++
				n := int(resp.Usage.PromptTokens + resp.Usage.CompletionTokens)
				reported += n
				costliest = max(costliest, n)
			case errors.As(err, &oe) && oe.StatusCode == http.StatusTooManyRequests && oe.Code == "insufficient_quota":
				refused++
			default:
				t.Errorf("request %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if served == 0 || refused == 0 || served+refused != requests {
		t.Fatalf("%d served, %d refused of %d", served, refused, requests)
	}
	if reported > budget+costliest {
		t.Fatalf("the burst spent %d tokens (%d requests served), over the budget of %d plus one request's %d", reported, served, budget, costliest)
	}
	// The budget's spend is what the jobs reported, once every reservation
	// has been settled.
	deadline := time.Now().Add(20 * time.Second)
	for {
		u := do(t, http.MethodGet, apis[0].URL()+"/api/v1/usage", nil, map[string]string{"Authorization": "Bearer " + keyAcme})
		b, _ := u.Body["budget"].(map[string]any)
		if b != nil && b["spent"] == float64(reported) && b["reserved"] == float64(0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("budget %s, want %d spent and nothing reserved", u.Raw, reported)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d served (%d tokens, the costliest %d), %d refused, against a budget of %d", served, reported, costliest, refused, budget)
}
