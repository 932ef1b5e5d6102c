package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// POST /admin/api/jobs/{id}/rerun: a job that failed for good (the upstream
// answered 400) and was archived runs again and succeeds (200, queued); an
// unknown id is 404; a running job, a succeeded one and the re-run one once
// it has succeeded are 409. The job's end and its re-run's end are two
// events with two webhook-ids, and the job's record shows the new one.
func TestAdminRerun(t *testing.T) {
	const msg = "try me again"
	fake := llmfake.NewOpenAI(t)
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	fake.SetPlan(func(call int) llmfake.Step {
		switch call {
		case 1: // the job that fails: a 400 is not retried
			return llmfake.Step{Status: http.StatusBadRequest, Message: "bad request"}
		case 2: // the job kept running while its re-run is refused
			<-release
		}
		return llmfake.Step{}
	})
	rcv := startScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	apis, _ := fleet(t, testkit.StartRedis(t), 1, 1, providerEnv(fake, map[string]string{
		"CHATFLEET_ADMIN_KEY":             hookAdminKey,
		"CHATFLEET_WEBHOOKS_FILE":         webhooksFile(t, map[string]any{"tenant": "default", "url": rcv.url(), "secret": newSecret(t)}),
		"CHATFLEET_WEBHOOK_ALLOW_PRIVATE": "true",
	}))
	// Runs before the processes stop: a failed test leaves no upstream call
	// held for the worker's shutdown to wait on.
	t.Cleanup(free)
	api := apis[0].URL()
	c := client.New(api)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rerun := func(id string) response { return hookAdmin(t, api, http.MethodPost, "/admin/api/jobs/"+id+"/rerun") }

	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "rerun-failed", Message: msg})
	if err != nil {
		t.Fatal(err)
	}
	j, err := c.Wait(ctx, sub.JobID)
	if err != nil || j.Status != "failed" || j.Attempts != 1 {
		t.Fatalf("job %+v %v, want failed at its first attempt", j, err)
	}
	// It is archived once asynq has given up on its task.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r := hookAdmin(t, api, http.MethodGet, "/admin/api/archived")
		if r.Status != http.StatusOK {
			t.Fatalf("archived jobs: %d %s", r.Status, r.Raw)
		}
		var list struct {
			Jobs []struct {
				JobID string `json:"job_id"`
			} `json:"jobs"`
		}
		_ = json.Unmarshal([]byte(r.Raw), &list)
		if len(list.Jobs) == 1 && list.Jobs[0].JobID == sub.JobID {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("archived jobs: %s, want %s", r.Raw, sub.JobID)
		}
	}

	if r := rerun("job_0000000000000000000000000"); r.Status != http.StatusNotFound {
		t.Fatalf("re-run an unknown job: %d %s, want 404", r.Status, r.Raw)
	}
	// A job still running is not archived: 409, and it runs on to its end.
	running, err := c.Submit(ctx, client.SubmitRequest{SessionID: "rerun-running", Message: "hold on"})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the second job running upstream", func() bool { return fake.InFlight() == 1 })
	if j, err := c.Get(ctx, running.JobID); err != nil || j.Status != "active" {
		t.Fatalf("the held job: %+v %v, want active", j, err)
	}
	if r := rerun(running.JobID); r.Status != http.StatusConflict {
		t.Fatalf("re-run a running job: %d %s, want 409", r.Status, r.Raw)
	}
	free()
	if j, err := c.Wait(ctx, running.JobID); err != nil || j.Status != "succeeded" || j.Attempts != 1 {
		t.Fatalf("the job whose re-run was refused: %+v %v, want succeeded once", j, err)
	}
	if r := rerun(running.JobID); r.Status != http.StatusConflict {
		t.Fatalf("re-run a succeeded job: %d %s, want 409", r.Status, r.Raw)
	}

	// Deliveries of different events are not ordered: the failure's is let
	// through first, so that the receiver's order below is the jobs' order.
	awaitHooks(t, c, sub.JobID, 20*time.Second, "the failure's event delivered", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].Event == "job.failed" && ds[0].State == "delivered"
	})

	// The archived job runs again from its first attempt and succeeds.
	if r := rerun(sub.JobID); r.Status != http.StatusOK || r.Body["job_id"] != sub.JobID || r.Body["status"] != "queued" {
		t.Fatalf("re-run: %d %s, want 200 queued", r.Status, r.Raw)
	}
	j, err = c.Wait(ctx, sub.JobID)
	if err != nil || j.Status != "succeeded" || j.Result == nil || j.Result.Content != llmfake.Reply(msg) || j.Attempts != 1 || j.Error != nil {
		t.Fatalf("re-run job: %+v %v", j, err)
	}
	if r := rerun(sub.JobID); r.Status != http.StatusConflict {
		t.Fatalf("re-run the re-run job once succeeded: %d %s, want 409", r.Status, r.Raw)
	}
	if n := fake.Calls(); n != 3 {
		t.Fatalf("%d upstream calls, want 3 (the failure, the held job, the re-run)", n)
	}

	// Webhooks: job.failed, then job.succeeded of the re-run under another
	// webhook-id, and the record shows the re-run's event delivered.
	d := awaitHooks(t, c, sub.JobID, 20*time.Second, "the re-run's event delivered", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].Event == "job.succeeded" && ds[0].State == "delivered"
	})[0]
	var events []string
	ids := map[string]string{}
	for _, h := range rcv.got() {
		var ev struct {
			Type string `json:"type"`
			Data struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(h.body, &ev); err != nil {
			t.Fatalf("webhook body %s: %v", h.body, err)
		}
		if ev.Data.ID == sub.JobID {
			events = append(events, ev.Type)
			ids[ev.Type] = h.header.Get("webhook-id")
		}
	}
	if len(events) != 2 || events[0] != "job.failed" || events[1] != "job.succeeded" {
		t.Fatalf("the re-run job's events: %v, want job.failed then job.succeeded", events)
	}
	if ids["job.failed"] == ids["job.succeeded"] || ids["job.succeeded"] != d.EventID {
		t.Fatalf("webhook-ids %v, the record's event %s: want two events, the record on the re-run's", ids, d.EventID)
	}
}
