package e2e

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// jobKeys counts the job records in Redis: a refused submit adds none.
func jobKeys(t *testing.T, rd *testkit.Redis) int {
	t.Helper()
	keys, err := rd.Client().Keys(context.Background(), "*:job:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// nextMonthUTC is the first instant of the month after now's, in UTC.
func nextMonthUTC(now time.Time) time.Time {
	now = now.UTC()
	return time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, 1, 0)
}

// A dollar budget by the month: one job priced at a dollar a token spends
// more than its $5, after which a submit is refused with 429
// insufficient_quota whose message names the budget ("$5 a month") and
// whose reset_at (and Retry-After) is the first of next month, UTC. The
// usage API reports the same budget in dollars, spent as the job's price.
func TestUSDMonthlyBudgetRefusesOnceSpent(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{
		"CHATFLEET_API_KEYS": keysEnv(),
		// A dollar a token: any one job costs more than the budget.
		"CHATFLEET_MODEL_PRICES":   "fake-model:input=1000000,output=1000000",
		"CHATFLEET_TENANT_BUDGETS": "acme:usd=5/month",
	}))
	base := apis[0].URL()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	acme := client.New(base, client.WithAPIKey(keyAcme))
	auth := map[string]string{"Authorization": "Bearer " + keyAcme}

	sub, err := acme.Submit(ctx, client.SubmitRequest{SessionID: "usd-1", Message: "spend more than five dollars"})
	if err != nil {
		t.Fatalf("the first submit, under the budget: %v", err)
	}
	j, err := acme.Wait(ctx, sub.JobID)
	if err != nil || j.Status != "succeeded" || j.Usage == nil {
		t.Fatalf("first job: %+v %v", j, err)
	}
	cost := float64(j.Usage.PromptTokens + j.Usage.CompletionTokens) // $1 a token
	if cost <= 5 {
		t.Fatalf("the job cost $%g, not more than the $5 budget: the test proves nothing", cost)
	}

	// The spend is settled at the job's price, in dollars.
	deadline := time.Now().Add(15 * time.Second)
	var b map[string]any
	for {
		u := do(t, http.MethodGet, base+"/api/v1/usage", nil, auth)
		if u.Status != http.StatusOK {
			t.Fatalf("usage: %d %s", u.Status, u.Raw)
		}
		b, _ = u.Body["budget"].(map[string]any)
		if b != nil && b["reserved"] == float64(0) && b["spent"] != nil && math.Abs(b["spent"].(float64)-cost) < 1e-6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage's budget %s: want $%g spent, nothing reserved", u.Raw, cost)
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := time.Now()
	r := do(t, http.MethodPost, base+"/api/v1/chat/jobs", map[string]any{"session_id": "usd-2", "message": "one more"}, auth)
	after := time.Now()
	if r.Status != http.StatusTooManyRequests {
		t.Fatalf("a submit past the dollar budget: %d %s", r.Status, r.Raw)
	}
	e, _ := r.Body["error"].(map[string]any)
	if e == nil || e["code"] != "insufficient_quota" || !strings.Contains(e["message"].(string), "$5 a month") {
		t.Fatalf("the refusal does not name the budget: %s", r.Raw)
	}
	// reset_at: the first of next month, UTC (either side of a month's end
	// that passed during the request).
	reset, want := e["reset_at"], nextMonthUTC(before).Format(time.RFC3339)
	if reset != want && reset != nextMonthUTC(after).Format(time.RFC3339) {
		t.Fatalf("reset_at %v, want %s: %s", reset, want, r.Raw)
	}
	if !strings.HasSuffix(want, "-01T00:00:00Z") {
		t.Fatalf("the expected reset %s is not the first of a month at midnight UTC", want)
	}
	retry, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if until := time.Until(nextMonthUTC(before)).Seconds(); err != nil || math.Abs(float64(retry)-until) > 120 {
		t.Fatalf("Retry-After %q, want about %.0f s (until the month resets)", r.Header.Get("Retry-After"), until)
	}
	if b["unit"] != "usd" || b["limit"] != float64(5) || b["budget"] != "$5 a month" || b["reset_at"] != reset {
		t.Fatalf("usage's budget %v: want $5 a month in usd, resetting at %v", b, reset)
	}
	// Nothing was written for the refused submit, nor called upstream.
	if l := do(t, http.MethodGet, base+"/api/v1/chat/jobs?session_id=usd-2", nil, auth); l.Status != http.StatusOK || len(l.Body["data"].([]any)) != 0 {
		t.Fatalf("a refused submit left a job: %d %s", l.Status, l.Raw)
	}
	if fake.Calls() != 1 {
		t.Fatalf("the upstream got %d calls, want the first job's only", fake.Calls())
	}
}

// A tenant whose budget was spent on the jobs API is refused on the
// Responses API too: 429 in OpenAI's error shape (type and code insufficient_quota), for a
// plain, a background and a streamed create, and nothing is queued for it:
// no job record, no hand-out, no upstream call. Another tenant goes on.
func TestBudgetRefusesResponses(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{
		"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_TENANT_BUDGETS": "acme:tokens=10/day",
	}))
	base := apis[0].URL()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	auth := map[string]string{"Authorization": "Bearer " + keyAcme}

	// Spent on the jobs API: one answer passes 10 tokens.
	acme := client.New(base, client.WithAPIKey(keyAcme))
	sub, err := acme.Submit(ctx, client.SubmitRequest{SessionID: "spend", Message: "six words to spend the budget"})
	if err != nil {
		t.Fatalf("the first submit, under the budget: %v", err)
	}
	j, err := acme.Wait(ctx, sub.JobID)
	if err != nil || j.Status != "succeeded" || j.Usage == nil {
		t.Fatalf("first job: %+v %v", j, err)
	}
	spent := float64(j.Usage.PromptTokens + j.Usage.CompletionTokens)
	if spent < 10 {
		t.Fatalf("the first job used %v tokens, not the whole budget of 10: the test proves nothing", spent)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		u := do(t, http.MethodGet, base+"/api/v1/usage", nil, auth)
		b, _ := u.Body["budget"].(map[string]any)
		if u.Status == http.StatusOK && b != nil && b["reserved"] == float64(0) && b["spent"] == spent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage %d %s: want the job's %v tokens spent and nothing reserved", u.Status, u.Raw, spent)
		}
		time.Sleep(100 * time.Millisecond)
	}

	records, handed, calls := jobKeys(t, rd), handedOut(t, rd.Client()), fake.Calls()
	for name, body := range map[string]map[string]any{
		"plain":      {"model": "fake-model", "input": "one more"},
		"background": {"model": "fake-model", "input": "one more", "background": true},
		"stream":     {"model": "fake-model", "input": "one more", "stream": true},
	} {
		r := do(t, http.MethodPost, base+"/v1/responses", body, auth)
		e, _ := r.Body["error"].(map[string]any)
		if r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" || e == nil ||
			e["type"] != "insufficient_quota" || e["code"] != "insufficient_quota" || e["message"] == "" {
			t.Fatalf("%s create past the budget: %d %s (Retry-After %q)", name, r.Status, r.Raw, r.Header.Get("Retry-After"))
		}
	}
	// The official SDK sees its own error.
	oa := responsesClient(base, keyAcme)
	_, err = oa.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("and the SDK")})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusTooManyRequests || oe.Code != "insufficient_quota" || oe.Type != "insufficient_quota" {
		t.Fatalf("the SDK got %v", err)
	}
	if n, h, c := jobKeys(t, rd), handedOut(t, rd.Client()), fake.Calls(); n != records || h != handed || c != calls {
		t.Fatalf("refused creates left %d job records (was %d), %d hand-outs (was %d), %d upstream calls (was %d)", n, records, h, handed, c, calls)
	}
	if n, err := rd.Client().HLen(ctx, rkeys.SchedJobs()).Result(); err != nil || n != 0 {
		t.Fatalf("%d jobs waiting in the scheduler after the refusals (%v)", n, err)
	}
	// The budget is acme's alone.
	other := do(t, http.MethodPost, base+"/v1/responses", map[string]any{"model": "fake-model", "input": "beta has no budget"},
		map[string]string{"Authorization": "Bearer " + keyBeta})
	if other.Status != http.StatusOK || other.Body["status"] != "completed" {
		t.Fatalf("another tenant's response: %d %s", other.Status, other.Raw)
	}
}
