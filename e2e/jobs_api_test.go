package e2e

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// With CHATFLEET_MODELS listing the models, a job asking for another is a
// 422 naming the field and the model, and nothing is queued for it: no
// record, no place in the scheduler. A listed model and no model at all are
// accepted. No worker runs, so what was queued stays to be counted.
func TestJobsAPIRefusesAModelOutsideTheList(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 0, map[string]string{"CHATFLEET_MODELS": "sim,other"})
	base := apis[0].URL()
	ctx := context.Background()

	r := do(t, http.MethodPost, base+"/api/v1/chat/jobs", map[string]any{"session_id": "m1", "message": "hi", "model": "gpt-nope"}, nil)
	e, _ := r.Body["error"].(map[string]any)
	if r.Status != http.StatusUnprocessableEntity || e == nil || e["field"] != "model" || !strings.Contains(fmt.Sprint(e["message"]), `"gpt-nope"`) {
		t.Fatalf("a model outside CHATFLEET_MODELS: %d %s", r.Status, r.Raw)
	}
	if n := jobKeys(t, rd); n != 0 {
		t.Fatalf("the refused submit left %d job records", n)
	}
	if n, err := rd.Client().HLen(ctx, rkeys.SchedJobs()).Result(); err != nil || n != 0 {
		t.Fatalf("the refused submit left %d jobs in the scheduler (%v)", n, err)
	}
	var ok []string
	for i, model := range []string{"other", ""} {
		body := map[string]any{"session_id": fmt.Sprintf("m%d", i+2), "message": "hi"}
		if model != "" {
			body["model"] = model
		}
		r := do(t, http.MethodPost, base+"/api/v1/chat/jobs", body, nil)
		if r.Status != http.StatusAccepted {
			t.Fatalf("model %q: %d %s", model, r.Status, r.Raw)
		}
		ok = append(ok, r.Body["job_id"].(string))
	}
	// Exactly the two accepted jobs are queued.
	if n, err := rd.Client().HLen(ctx, rkeys.SchedJobs()).Result(); err != nil || n != 2 {
		t.Fatalf("%d jobs in the scheduler, want the 2 accepted (%v)", n, err)
	}
	l := do(t, http.MethodGet, base+"/api/v1/chat/jobs", nil, nil)
	data, _ := l.Body["data"].([]any)
	if l.Status != http.StatusOK || len(data) != 2 {
		t.Fatalf("job list: %d %s, want the 2 accepted jobs %v", l.Status, l.Raw, ok)
	}
	for _, x := range data {
		if id := x.(map[string]any)["job_id"]; id != ok[0] && id != ok[1] {
			t.Fatalf("the list has %v, not one of the accepted %v", id, ok)
		}
	}
}

// GET /api/v1/usage?group_by=day sums each day's rows over the models: jobs
// on two priced models give, per day, one row without a model whose
// requests, tokens and cost are the sums of that day's per-model rows; and
// the per-model rows are what the jobs reported.
func TestUsageGroupedByDaySumsOverModels(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{
		"CHATFLEET_API_KEYS":     keysEnv(),
		"CHATFLEET_MODEL_PRICES": "fake-model:input=2.5,output=10;other-model:input=0.15,output=0.6",
	}))
	base := apis[0].URL()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	acme := client.New(base, client.WithAPIKey(keyAcme))

	type sums struct{ requests, prompt, completion float64 }
	byModel := map[string]*sums{"fake-model": {}, "other-model": {}}
	var ids []string
	models := []string{"fake-model", "other-model", "fake-model", "other-model", "other-model"}
	for i, model := range models {
		sub, err := acme.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("day-%d", i), Message: strings.Repeat("word ", i+1), Model: model})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sub.JobID)
	}
	for i, id := range ids {
		j, err := acme.Wait(ctx, id)
		if err != nil || j.Status != "succeeded" || j.Usage == nil {
			t.Fatalf("job %s: %+v %v", id, j, err)
		}
		s := byModel[models[i]]
		s.requests++
		s.prompt += float64(j.Usage.PromptTokens)
		s.completion += float64(j.Usage.CompletionTokens)
	}

	// The rows per day and model are the jobs' usage.
	rows, _ := usageOf(t, base, keyAcme, "")
	if len(rows) < 2 {
		t.Fatalf("%d rows by day and model, want one per model at least: %v", len(rows), rows)
	}
	perDay := map[string]*sums{} // the per-model rows summed by day
	perDayCost := map[string]float64{}
	got := map[string]*sums{"fake-model": {}, "other-model": {}}
	for _, row := range rows {
		d, m := row["date"].(string), row["model"].(string)
		if perDay[d] == nil {
			perDay[d] = &sums{}
		}
		for _, s := range []*sums{perDay[d], got[m]} {
			s.requests += row["requests"].(float64)
			s.prompt += row["prompt_tokens"].(float64)
			s.completion += row["completion_tokens"].(float64)
		}
		perDayCost[d] += row["cost_usd"].(float64)
	}
	for m, w := range byModel {
		if *got[m] != *w {
			t.Fatalf("model %s: rows sum to %+v, the jobs reported %+v", m, *got[m], *w)
		}
	}

	days, total := usageOf(t, base, keyAcme, "?group_by=day")
	if len(days) != len(perDay) {
		t.Fatalf("group_by=day gave %d rows, want one per day (%d): %v", len(days), len(perDay), days)
	}
	for d, w := range perDay {
		row := days[d+"|<nil>"] // a day's row names no model
		if row == nil {
			t.Fatalf("no row for %s without a model: %v", d, days)
		}
		g := sums{row["requests"].(float64), row["prompt_tokens"].(float64), row["completion_tokens"].(float64)}
		// Each row's cost is rounded to a millionth of a dollar.
		if g != *w || math.Abs(row["cost_usd"].(float64)-perDayCost[d]) > 2e-6 {
			t.Fatalf("day %s: %v, want the sum over its models %+v costing %v", d, row, *w, perDayCost[d])
		}
	}
	if total["requests"] != float64(len(ids)) {
		t.Fatalf("total %v, want %d requests", total, len(ids))
	}
}
