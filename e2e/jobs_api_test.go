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
	"github.com/chatfleet/chatfleet/tasks"
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
	r := do(t, http.MethodGet, base+"/api/v1/usage?group_by=day", nil, map[string]string{"Authorization": "Bearer " + keyAcme})
	if data, _ := r.Body["data"].([]any); r.Status != http.StatusOK || len(data) != len(perDay) || len(days) != len(perDay) {
		t.Fatalf("group_by=day: %d %s, want one row per day (%d)", r.Status, r.Raw, len(perDay))
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

// An Idempotency-Key sent again once its job's record has expired
// (CHATFLEET_JOB_RETENTION) makes a new job: 202, queued, created after the
// first ended, and run again (the session's history holds both turns). It is
// sent at once, while the key's binding to its job id (kept twice the
// retention) still stands: the binding tells sessions apart, it does not
// keep the key. The job id is the same: it is derived from the tenant, the
// key and the session (docs/design.md).
func TestIdempotencyKeyMakesANewJobAfterRetention(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_JOB_RETENTION": "2s"})
	base := apis[0].URL()
	key := map[string]string{"Idempotency-Key": "order-1"}
	first := submit(t, base, "idem-retention", "once more", key)
	if first.Status != http.StatusAccepted {
		t.Fatalf("first submit: %d %s", first.Status, first.Raw)
	}
	id := first.Body["job_id"].(string)
	done := waitJob(t, base, id)
	if done.Body["status"] != "succeeded" {
		t.Fatalf("first job: %s", done.Raw)
	}
	ended, err := time.Parse(time.RFC3339Nano, done.Body["finished_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	// Within the retention the key replays the job.
	if r := submit(t, base, "idem-retention", "once more", key); r.Status != http.StatusOK || r.Body["job_id"] != id {
		t.Fatalf("the key within the retention: %d %s", r.Status, r.Raw)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := do(t, http.MethodGet, base+"/api/v1/chat/jobs/"+id, nil, nil)
		if r.Status == http.StatusNotFound {
			break
		}
		if r.Status != http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("job %s after its retention: %d %s", id, r.Status, r.Raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
	binding := rkeys.Idempotency("default", tasks.IdempotencyKeyHash("default", "order-1"))
	ttl, err := rd.Client().PTTL(context.Background(), binding).Result()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the key's binding has %s to live as the key is sent again", ttl)
	again := submit(t, base, "idem-retention", "once more", key)
	if again.Status != http.StatusAccepted || again.Header.Get("Idempotent-Replayed") != "" || again.Body["status"] != "queued" {
		t.Fatalf("the key after its job expired: %d %s", again.Status, again.Raw)
	}
	second := waitJob(t, base, again.Body["job_id"].(string))
	created, err := time.Parse(time.RFC3339Nano, second.Body["created_at"].(string))
	if err != nil || second.Body["status"] != "succeeded" || !created.After(ended) {
		t.Fatalf("the new job %s (created %v), the first ended %v", second.Raw, created, ended)
	}
	h := do(t, http.MethodGet, base+"/api/v1/sessions/idem-retention/messages", nil, nil)
	if msgs, _ := h.Body["messages"].([]any); h.Status != http.StatusOK || len(msgs) != 4 {
		t.Fatalf("history: %d %s, want both runs' turns", h.Status, h.Raw)
	}
}
