package e2e

import (
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/tasks"
)

// Redis stops: a POST answers 503 with Retry-After within a second, and readiness
// is withdrawn. Redis comes back on the same address: the same processes serve
// and finish jobs again, without a restart.
func TestRedisOutageAnswers503ThenRecovers(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, workers := fleet(t, rd, 1, 1, nil)
	api := apis[0]

	before := submit(t, api.URL(), "sess_outage", "before", nil)
	if before.Status != http.StatusAccepted {
		t.Fatalf("submit before the outage: %d %s", before.Status, before.Raw)
	}
	waitJob(t, api.URL(), before.Body["job_id"].(string))

	rd.Stop()
	start := time.Now()
	r := submit(t, api.URL(), "sess_outage", "during", nil)
	elapsed := time.Since(start)
	if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("submit during the outage: %d %s (Retry-After %q)", r.Status, r.Raw, r.Header.Get("Retry-After"))
	}
	t.Logf("503 with Retry-After %s after %s", r.Header.Get("Retry-After"), elapsed)
	// A refused connection is known at once: it takes milliseconds (logged);
	// 3 s leaves a loaded machine room and is still half of the 6 s that
	// waiting out the client's command timeouts would take.
	if elapsed > 3*time.Second {
		t.Fatalf("503 took %s, want under 3s", elapsed)
	}
	if got := do(t, http.MethodGet, api.URL()+"/health/ready", nil, nil); got.Status != http.StatusServiceUnavailable {
		t.Fatalf("api ready during the outage: %d", got.Status)
	}
	if got := do(t, http.MethodGet, workers[0].URL()+"/health/ready", nil, nil); got.Status != http.StatusServiceUnavailable {
		t.Fatalf("worker ready during the outage: %d", got.Status)
	}
	if got := do(t, http.MethodGet, api.URL()+"/health/live", nil, nil); got.Status != http.StatusOK {
		t.Fatalf("api live during the outage: %d", got.Status)
	}

	rd.Restart()
	deadline := time.Now().Add(15 * time.Second)
	var after response
	for {
		after = submit(t, api.URL(), "sess_outage_after", "after", nil)
		if after.Status == http.StatusAccepted || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after.Status != http.StatusAccepted {
		t.Fatalf("submit after Redis returned: %d %s", after.Status, after.Raw)
	}
	done := waitJob(t, api.URL(), after.Body["job_id"].(string))
	if done.Body["status"] != "succeeded" || content(done) != "echo: after" {
		t.Fatalf("job after the outage: %s", done.Raw)
	}
	if got := do(t, http.MethodGet, workers[0].URL()+"/health/ready", nil, nil); got.Status != http.StatusOK {
		t.Fatalf("worker not ready after the outage: %d", got.Status)
	}
}

// Redis hangs (frozen: connections stay open, nothing answers): requests get
// 503 with Retry-After within about a second, as readiness does, instead of
// waiting out the client's command timeouts; once Redis answers again they
// are served.
func TestHungRedisAnswers503Quickly(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, nil)
	api := apis[0]
	first := submit(t, api.URL(), "sess_hung", "before", nil)
	if first.Status != http.StatusAccepted {
		t.Fatalf("submit before: %d %s", first.Status, first.Raw)
	}
	id := first.Body["job_id"].(string)
	waitJob(t, api.URL(), id)

	rd.Signal(syscall.SIGSTOP)
	frozen := true
	defer func() {
		if frozen {
			rd.Signal(syscall.SIGCONT)
		}
	}()
	time.Sleep(time.Second) // what a prober needs to notice
	for name, call := range map[string]func() response{
		"submit":  func() response { return submit(t, api.URL(), "sess_hung", "during", nil) },
		"get job": func() response { return do(t, http.MethodGet, api.URL()+"/api/v1/chat/jobs/"+id, nil, nil) },
		"chat completions": func() response {
			return do(t, http.MethodPost, api.URL()+"/v1/chat/completions", map[string]any{
				"model": "sim", "messages": []map[string]string{{"role": "user", "content": "hi"}}}, nil)
		},
	} {
		start := time.Now()
		r := call()
		took := time.Since(start)
		// About a second (logged below); 3 s is room for a loaded machine and
		// still half of what waiting out the command timeouts takes (6 s).
		t.Logf("%s answered %d after %s", name, r.Status, took.Round(time.Millisecond))
		if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" || took > 3*time.Second {
			t.Errorf("%s with Redis hung: %d after %s (Retry-After %q) %s", name, r.Status, took.Round(time.Millisecond), r.Header.Get("Retry-After"), r.Raw)
		}
	}
	rd.Signal(syscall.SIGCONT)
	frozen = false
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := submit(t, api.URL(), "sess_hung_after", "after", nil)
		if r.Status == http.StatusAccepted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("submit after Redis answered again: %d %s", r.Status, r.Raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Redis hangs while requests are under way: the gate, once it sees Redis
// hang, cancels their Redis calls and answers them 503 with Retry-After,
// instead of letting them wait out the client's command timeouts (6 s for a
// submit). Once Redis answers again every job there is has its task and
// runs: none was lost or left half-written.
func TestHungRedisAnswersRequestsUnderWay503(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, nil)
	api := apis[0]
	const session = "sess_hung_under_way"
	first := submit(t, api.URL(), session, "before", nil)
	if first.Status != http.StatusAccepted {
		t.Fatalf("submit before: %d %s", first.Status, first.Raw)
	}
	waitJob(t, api.URL(), first.Body["job_id"].(string))

	rd.Signal(syscall.SIGSTOP)
	frozen := true
	defer func() {
		if frozen {
			rd.Signal(syscall.SIGCONT)
		}
	}()
	// Sent at once: the gate has not seen the freeze yet, so these reach
	// Redis and hang there.
	calls := map[string]func() response{
		"submit": func() response { return submit(t, api.URL(), session, "during", nil) },
		"submit with an Idempotency-Key": func() response {
			return submit(t, api.URL(), session, "during, keyed", map[string]string{"Idempotency-Key": "hung-under-way"})
		},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for name, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			r := call()
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			t.Logf("%s: %d after %s", name, r.Status, took.Round(time.Millisecond))
			// About 0.75 s (a probe's interval and wait); the bound leaves
			// room for a loaded machine, and is half the 6 s of waiting out
			// the command timeouts.
			if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" || took > 3*time.Second {
				t.Errorf("%s under way as Redis hung: %d after %s (Retry-After %q) %s",
					name, r.Status, took.Round(time.Millisecond), r.Header.Get("Retry-After"), r.Raw)
			}
		}()
	}
	wg.Wait()

	rd.Signal(syscall.SIGCONT)
	frozen = false
	deadline := time.Now().Add(10 * time.Second)
	var after response
	for {
		after = submit(t, api.URL(), session, "after", nil)
		if after.Status == http.StatusAccepted || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after.Status != http.StatusAccepted {
		t.Fatalf("submit after Redis answered again: %d %s", after.Status, after.Raw)
	}
	if done := waitJob(t, api.URL(), after.Body["job_id"].(string)); done.Body["status"] != "succeeded" {
		t.Fatalf("job after the freeze: %s", done.Raw)
	}

	// Every job of the session has run: a record left without its task
	// would wait queued for the reconciler (30 s), far past this point,
	// since the session's jobs run in order and the last one has finished.
	list := do(t, http.MethodGet, api.URL()+"/api/v1/chat/jobs?session_id="+session, nil, nil)
	jobsListed, _ := list.Body["data"].([]any)
	if list.Status != http.StatusOK || len(jobsListed) < 2 || len(jobsListed) > 4 {
		t.Fatalf("jobs of the session: %d %s", list.Status, list.Raw)
	}
	for _, j := range jobsListed {
		if j := j.(map[string]any); j["status"] != "succeeded" {
			t.Errorf("job %s is %s after the freeze, want succeeded", j["job_id"], j["status"])
		}
	}
	// And each job was handed out once, none that was undone, and no task
	// is left.
	insp := asynq.NewInspectorFromRedisClient(rd.UniversalClient())
	for q := range tasks.Queues {
		if info, err := insp.GetQueueInfo(q); err == nil && info.Size != 0 { // a queue never used does not exist
			t.Errorf("queue %s holds tasks after every job ended: %+v", q, info)
		}
	}
	processed := handedOut(t, rd.UniversalClient())
	if processed != len(jobsListed) {
		t.Errorf("%d jobs handed out for %d jobs", processed, len(jobsListed))
	}
}
