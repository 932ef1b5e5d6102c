package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// usageOf reads a tenant's usage rows, keyed "date|model".
func usageOf(t *testing.T, base, key, query string) (map[string]map[string]any, map[string]any) {
	t.Helper()
	r := do(t, http.MethodGet, base+"/api/v1/usage"+query, nil, map[string]string{"Authorization": "Bearer " + key})
	if r.Status != http.StatusOK {
		t.Fatalf("usage: %d %s", r.Status, r.Raw)
	}
	rows := map[string]map[string]any{}
	for _, x := range r.Body["data"].([]any) {
		row := x.(map[string]any)
		rows[fmt.Sprint(row["date"], "|", row["model"])] = row
	}
	return rows, r.Body["total"].(map[string]any)
}

// Jobs of two tenants over two models: the usage API returns each tenant's
// exact token sums per day and model, priced from CHATFLEET_MODEL_PRICES,
// and never another tenant's. A worker SIGKILLed mid-run and a Redis
// restart (AOF) lose nothing and count nothing twice.
func TestUsagePerTenantDayAndModel(t *testing.T) {
	rd := testkit.StartRedis(t, testkit.WithAOF())
	fake := llmfake.NewOpenAI(t)
	fake.Always(llmfake.Step{TokenDelay: 100 * time.Millisecond}) // replies take about half a second
	apis, workers := fleet(t, rd, 1, 2, providerEnv(fake, map[string]string{
		"CHATFLEET_API_KEYS":     keysEnv(),
		"CHATFLEET_MODEL_PRICES": "fake-model:input=2.5,output=10;other-model:input=0.15,output=0.6",
		"CHATFLEET_JOB_LEASE":    "1s",
		"CHATFLEET_ADMIN_KEY":    "admin-key-0123456789",
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	keys := map[string]string{"acme": keyAcme, "beta": keyBeta}
	var ids []struct{ tenant, id string }
	tenantOf := map[string]string{} // message → tenant
	for i := range 24 {
		tenant, model := "acme", "fake-model"
		if i%3 == 0 {
			tenant = "beta"
		}
		if i%2 == 0 {
			model = "other-model"
		}
		c := client.New(apis[0].URL(), client.WithAPIKey(keys[tenant]))
		msg := fmt.Sprintf("count %d words here", i)
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("u%d", i), Message: msg, Model: model})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, struct{ tenant, id string }{tenant, sub.JobID})
		tenantOf[msg] = tenant
	}
	time.Sleep(150 * time.Millisecond) // both workers mid-reply
	workers[0].Signal(syscall.SIGKILL)
	if _, ok := workers[0].Wait(5 * time.Second); !ok {
		t.Fatal("the killed worker did not exit")
	}
	rd.Restart()
	today := time.Now().UTC().Format(time.DateOnly)
	retried := 0
	for _, j := range ids {
		got, err := client.New(apis[0].URL(), client.WithAPIKey(keys[j.tenant])).Wait(ctx, j.id)
		if err != nil || got.Status != "succeeded" || got.Usage == nil {
			t.Fatalf("job %s: %+v %v", j.id, got, err)
		}
		if got.Attempts > 1 {
			retried++
		}
	}
	if retried == 0 {
		t.Fatal("no job was interrupted by the kill: the test did not test a takeover")
	}
	// The expected ledger is what the upstream billed: every call that ran to
	// its end, by the tenant whose message it carried and the model it asked
	// for. The killed worker's calls were cut off, so they billed nothing
	// (and no estimate is due for them: their worker died).
	type want struct{ requests, prompt, completion int64 }
	expected := map[string]map[string]*want{"acme": {}, "beta": {}}
	billed := fake.Billed()
	for _, u := range billed {
		tenant := tenantOf[u.Message]
		if tenant == "" {
			t.Fatalf("the upstream billed a call nobody submitted: %+v", u)
		}
		w := expected[tenant][u.Model]
		if w == nil {
			w = &want{}
			expected[tenant][u.Model] = w
		}
		w.requests++
		w.prompt += int64(u.PromptTokens)
		w.completion += int64(u.CompletionTokens)
	}
	if len(billed) != len(ids) || fake.Aborted() == 0 {
		t.Fatalf("the upstream billed %d calls for %d jobs and saw %d cut off: the kill should cut calls and every job be billed once",
			len(billed), len(ids), fake.Aborted())
	}
	prices := map[string][2]float64{"fake-model": {2.5, 10}, "other-model": {0.15, 0.6}}
	for tenant, models := range expected {
		rows, total := usageOf(t, apis[0].URL(), keys[tenant], "")
		if len(rows) != len(models) {
			t.Fatalf("%s: %d usage rows, want %d: %v", tenant, len(rows), len(models), rows)
		}
		var sumCost float64
		for model, w := range models {
			row := rows[today+"|"+model]
			cost := (float64(w.prompt)*prices[model][0] + float64(w.completion)*prices[model][1]) / 1e6
			sumCost += cost
			if row == nil || row["estimated_tokens"] != nil || row["requests"] != float64(w.requests) || row["prompt_tokens"] != float64(w.prompt) ||
				row["completion_tokens"] != float64(w.completion) || math.Abs(row["cost_usd"].(float64)-cost) > 1e-6 {
				t.Fatalf("%s %s: %v, want %+v costing %v", tenant, model, row, *w, cost)
			}
		}
		if math.Abs(total["cost_usd"].(float64)-sumCost) > 1e-6 {
			t.Fatalf("%s total %v, want cost %v", tenant, total, sumCost)
		}
	}
	// Operators see every tenant's, behind the admin key.
	r := do(t, http.MethodGet, apis[0].URL()+"/admin/api/usage?group_by=model", nil, map[string]string{"Authorization": "Bearer admin-key-0123456789"})
	if r.Status != http.StatusOK || len(r.Body["tenants"].([]any)) != 2 {
		t.Fatalf("admin usage: %d %s", r.Status, r.Raw)
	}
	for _, x := range r.Body["tenants"].([]any) {
		tu := x.(map[string]any)
		var want int64
		for _, w := range expected[tu["tenant"].(string)] {
			want += w.prompt
		}
		if got := tu["total"].(map[string]any)["prompt_tokens"]; got != float64(want) {
			t.Fatalf("admin usage of %s: prompt tokens %v, want %d", tu["tenant"], got, want)
		}
	}
	if r := do(t, http.MethodGet, apis[0].URL()+"/admin/api/usage", nil, map[string]string{"Authorization": "Bearer " + keyAcme}); r.Status != http.StatusUnauthorized {
		t.Fatalf("admin usage with a tenant's key: %d", r.Status)
	}
	byModel, _ := usageOf(t, apis[0].URL(), keyAcme, "?group_by=model&from="+today+"&to="+today)
	if len(byModel) != len(expected["acme"]) {
		t.Fatalf("grouped by model: %v", byModel)
	}
	for _, q := range []string{"?from=2026-13-01", "?from=2026-11-30&to=2026-11-01", "?group_by=week", "?from=2024-01-01&to=2026-01-01"} {
		if r := do(t, http.MethodGet, apis[0].URL()+"/api/v1/usage"+q, nil, map[string]string{"Authorization": "Bearer " + keyAcme}); r.Status != http.StatusBadRequest {
			t.Fatalf("usage%s: %d %s", q, r.Status, r.Raw)
		}
	}
	t.Logf("usage: acme %d models, beta %d models; %d jobs taken over after the SIGKILL, and a Redis restart", len(expected["acme"]), len(expected["beta"]), retried)
}

// Usage is counted and priced under the model the fleet asked for: a
// provider that answers under a dated snapshot's name (unpriced) does not
// make a job free, nor a dollar budget blind to it.
func TestUsageIsPricedByTheModelAskedFor(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	fake.Always(llmfake.Step{AnswerAs: "gpt-4o-2024-08-06"})
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{
		"CHATFLEET_LLM_MODEL": "gpt-4o", "CHATFLEET_API_KEYS": keysEnv(),
		"CHATFLEET_MODEL_PRICES":   "gpt-4o:input=2.5,output=10",
		"CHATFLEET_TENANT_BUDGETS": "acme:usd=5/day",
	}))
	c := client.New(apis[0].URL(), client.WithAPIKey(keyAcme))
	ctx := context.Background()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "priced", Message: "what does this cost"})
	if err != nil {
		t.Fatal(err)
	}
	j, err := c.Wait(ctx, sub.JobID)
	if err != nil || j.Status != "succeeded" || j.Usage == nil || j.Result.Model != "gpt-4o-2024-08-06" {
		t.Fatalf("job %+v (%v): want it answered under the snapshot's name", j, err)
	}
	want := (float64(j.Usage.PromptTokens)*2.5 + float64(j.Usage.CompletionTokens)*10) / 1e6
	today := time.Now().UTC().Format(time.DateOnly)
	deadline := time.Now().Add(15 * time.Second)
	for {
		u := do(t, http.MethodGet, apis[0].URL()+"/api/v1/usage?from="+today+"&to="+today, nil, map[string]string{"Authorization": "Bearer " + keyAcme})
		data, _ := u.Body["data"].([]any)
		b, _ := u.Body["budget"].(map[string]any)
		var row map[string]any
		if len(data) == 1 {
			row, _ = data[0].(map[string]any)
		}
		if row != nil && row["model"] == "gpt-4o" && row["cost_usd"] != nil && math.Abs(row["cost_usd"].(float64)-want) < 1e-6 &&
			b != nil && b["spent"] != nil && math.Abs(b["spent"].(float64)-want) < 1e-6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage %s: want one row of gpt-4o costing $%g, and the budget spent that much", u.Raw, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A call that streamed and then broke off was billed by its provider: it is
// counted in the ledger as an estimate, marked so, beside the usage the
// retry's answer reported. The ledger is what the upstream reported plus the
// marked estimates.
func TestUsageCountsACallCutAfterStreaming(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	fake.SetPlan(func(call int) llmfake.Step {
		if call == 1 {
			return llmfake.Step{CutAfter: 3} // breaks off mid-reply, before any usage
		}
		return llmfake.Step{}
	})
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{"CHATFLEET_API_KEYS": keysEnv()}))
	c := client.New(apis[0].URL(), client.WithAPIKey(keyAcme))
	ctx := context.Background()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "cut", Message: "tell me a longer story about the sea please"})
	if err != nil {
		t.Fatal(err)
	}
	j, err := c.Wait(ctx, sub.JobID)
	if err != nil || j.Status != "succeeded" || j.Attempts != 2 || j.Usage == nil {
		t.Fatalf("job %+v (%v): want it answered by its second attempt", j, err)
	}
	reported := j.Usage.PromptTokens + j.Usage.CompletionTokens // the answering call's, as the upstream reported
	today := time.Now().UTC().Format(time.DateOnly)
	u := do(t, http.MethodGet, apis[0].URL()+"/api/v1/usage?from="+today+"&to="+today, nil, map[string]string{"Authorization": "Bearer " + keyAcme})
	total, _ := u.Body["total"].(map[string]any)
	if total == nil {
		t.Fatalf("usage %s", u.Raw)
	}
	tokens := int(total["prompt_tokens"].(float64) + total["completion_tokens"].(float64))
	estimated, _ := total["estimated_tokens"].(float64)
	if total["requests"] != float64(1) || estimated <= 0 || tokens-int(estimated) != reported {
		t.Fatalf("usage %s: want 1 request, %d tokens reported by the upstream plus a marked estimate of the cut call", u.Raw, reported)
	}
}
