package e2e

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/tasks"
)

// 60 concurrent POSTs with one Idempotency-Key, spread over two API nodes,
// make exactly one job: one 202, 59 replays of the same id, one task in Redis.
func TestConcurrentIdempotentPostsMakeOneJob(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		apis, _ := fleet(t, rd, 2, 1, nil)

		const n = 60
		results := make([]response, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[i] = submit(t, apis[i%2].URL(), "sess_idem", "only once", map[string]string{"Idempotency-Key": "order-7431"})
			}()
		}
		close(start)
		wg.Wait()

		accepted, replayed := 0, 0
		ids := map[string]bool{}
		for _, r := range results {
			switch {
			case r.Status == http.StatusAccepted:
				accepted++
			case r.Status == http.StatusOK && r.Header.Get("Idempotent-Replayed") == "true":
				replayed++
			default:
				t.Fatalf("unexpected answer: %d %s", r.Status, r.Raw)
			}
			ids[r.Body["job_id"].(string)] = true
		}
		if accepted != 1 || replayed != n-1 || len(ids) != 1 {
			t.Fatalf("accepted=%d replayed=%d distinct ids=%d, want 1, %d, 1", accepted, replayed, len(ids), n-1)
		}
		var id string
		for k := range ids {
			id = k
		}
		done := waitJob(t, apis[0].URL(), id)
		if content(done) != "echo: only once" || done.Body["attempts"] != float64(1) {
			t.Fatalf("job: %s", done.Raw)
		}

		// The job ran once (one attempt, one answer in the history), and no
		// task is left of it: the record
		// answers a replay after that. A replay that read the job queued
		// just before it ended may enqueue a task; that task finds the job
		// finished and does nothing.
		insp := asynq.NewInspectorFromRedisClient(rd.UniversalClient())
		queued := func() (n int) {
			t.Helper()
			for q := range tasks.Queues {
				if info, err := insp.GetQueueInfo(q); err == nil { // a queue never used does not exist
					n += info.Size // every state, completed included
				}
			}
			return n
		}
		for deadline := time.Now().Add(10 * time.Second); queued() != 0; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("a task of the job is left in the queues")
			}
		}
		// Replays that found the job queued while it was on its way to its
		// worker may have scheduled it again; those hand-outs found it
		// running or done (one attempt, above).
		handed := handedOut(t, rd.UniversalClient())
		again := submit(t, apis[1].URL(), "sess_idem", "only once", map[string]string{"Idempotency-Key": "order-7431"})
		if again.Status != http.StatusOK || again.Body["job_id"] != id || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("a replay after the job ran: %d %s", again.Status, again.Raw)
		}
		if n, hand := queued(), handedOut(t, rd.UniversalClient()); n != 0 || hand != handed {
			t.Fatalf("a replay after the job ran made a task or scheduled it again (%d queued, handed out %d times, %d before)", n, hand, handed)
		}
		if done := waitJob(t, apis[0].URL(), id); done.Body["attempts"] != float64(1) {
			t.Fatalf("job after the replays: %s", done.Raw)
		}
		h := do(t, http.MethodGet, apis[1].URL()+"/api/v1/sessions/sess_idem/messages", nil, nil)
		if msgs, _ := h.Body["messages"].([]any); len(msgs) != 2 {
			t.Fatalf("history has %d messages, want 2: %s", len(msgs), h.Raw)
		}

		// The same key with another body is a conflict, never a second job.
		r := do(t, http.MethodPost, apis[0].URL()+"/api/v1/chat/jobs",
			map[string]any{"session_id": "sess_idem", "message": "something else"}, map[string]string{"Idempotency-Key": "order-7431"})
		if r.Status != http.StatusConflict {
			t.Fatalf("same key, other body: %d %s", r.Status, r.Raw)
		}
	})
}
