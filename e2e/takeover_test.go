package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// followed is a job followed live from its first event, with arrival times.
type followed struct {
	mu        sync.Mutex
	events    []client.Event
	at        []time.Time
	doneCount int
	err       error
}

func follow(ctx context.Context, c *client.Client, id string) *followed {
	s := &followed{}
	go func() {
		err := c.Stream(ctx, id, client.StreamOptions{RetryFor: time.Minute}, func(ev client.Event) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.events = append(s.events, ev)
			s.at = append(s.at, time.Now())
			if ev.Type == "done" {
				s.doneCount++
			}
			return nil
		})
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
	}()
	return s
}

func (s *followed) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// afterLastRetry is the text followed after the last retry event.
func (s *followed) afterLastRetry() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, ev := range s.events {
		switch ev.Type {
		case "retry":
			b.Reset()
		case "token":
			b.WriteString(ev.Delta)
		}
	}
	return b.String()
}

// A worker SIGKILLed while 8 jobs stream through it, a second worker running:
// every job goes on within 5 s of the kill (its next event, a retry, comes
// from the new attempt), finishes exactly once, and what it streams after the
// retry is the result.
func TestKilledWorkersJobsGoOnWithinSeconds(t *testing.T) {
	rd := testkit.StartRedis(t)
	extra := map[string]string{"CHATFLEET_SIM_TOKENS": "80", "CHATFLEET_SIM_TOKEN_DELAY": "50ms", "CHATFLEET_JOB_LEASE": "3s"}
	apis, workers := fleet(t, rd, 1, 1, extra)
	victim := workers[0]
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 8
	// All of them stream through the victim; then a second worker joins.
	ids, streams := submitStreaming(ctx, t, c, "kill", n)
	rescuer := testkit.StartProc(t, "worker-1", workerBin, fleetEnv(rd.URL(), extra))
	lag := machineLag()
	victim.Signal(syscall.SIGKILL)
	killedAt := time.Now()
	type went struct {
		id      string
		resumed time.Duration
	}
	var resumes []went
	for i, id := range ids {
		j, err := c.Wait(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		s := streams[i]
		waitUntil(t, 5*time.Second, "the done event", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.doneCount > 0 })
		s.mu.Lock()
		var resumed time.Duration = -1
		for k, ev := range s.events {
			if ev.Type == "retry" && s.at[k].After(killedAt) {
				resumed = s.at[k].Sub(killedAt)
				break
			}
		}
		done := s.doneCount
		s.mu.Unlock()
		if j.Status != "succeeded" || j.Attempts != 2 || done != 1 {
			t.Fatalf("job %s: status %s, attempts %d, done events %d", id, j.Status, j.Attempts, done)
		}
		if resumed < 0 {
			t.Errorf("job %s: no retry event after the kill", id)
		}
		resumes = append(resumes, went{id, resumed})
		if got := s.afterLastRetry(); got != j.Result.Content {
			t.Errorf("job %s: followed after the retry %q, result %q", id, got, j.Result.Content)
		}
	}
	// Within 5 s, plus however late the machine itself ran meanwhile.
	noise := lag()
	for _, r := range resumes {
		t.Logf("job %s went on %s after the kill", r.id, r.resumed.Round(time.Millisecond))
		if r.resumed > 5*time.Second+noise {
			t.Errorf("job %s went on %s after the kill, want within 5s (+%s the machine ran late)", r.id, r.resumed, noise)
		}
	}
	t.Logf("the machine ran up to %s late meanwhile", noise)
	if v, _ := labelled(t, rescuer.URL(), "chatfleet_job_takeovers_total"); v != n {
		t.Errorf("the surviving worker counted %v takeovers, want %d", v, n)
	}
}

// A worker stopped (SIGSTOP) mid-stream until its jobs were taken over and
// finished elsewhere, then continued: it writes nothing more, so no event
// follows any final event and records and histories stay as they were.
func TestPausedWorkerIsFencedOut(t *testing.T) {
	rd := testkit.StartRedis(t)
	extra := map[string]string{"CHATFLEET_SIM_TOKENS": "40", "CHATFLEET_SIM_TOKEN_DELAY": "50ms", "CHATFLEET_JOB_LEASE": "1500ms"}
	apis, workers := fleet(t, rd, 1, 1, extra)
	paused := workers[0]
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids, _ := submitStreaming(ctx, t, c, "pause", 6)
	testkit.StartProc(t, "worker-1", workerBin, fleetEnv(rd.URL(), extra))
	paused.Signal(syscall.SIGSTOP)
	type snapshot struct {
		events  int64
		history int64
		record  map[string]string
	}
	snap := func(id, session string) snapshot {
		r := rd.Client()
		ev, _ := r.LLen(ctx, rkeys.Events(id)).Result()
		h, _ := r.LLen(ctx, rkeys.History("default", session)).Result()
		rec, _ := r.HGetAll(ctx, rkeys.Job(id)).Result()
		return snapshot{ev, h, rec}
	}
	before := map[string]snapshot{}
	for i, id := range ids {
		j, err := c.Wait(ctx, id)
		if err != nil || j.Status != "succeeded" {
			t.Fatalf("job %s: %+v %v", id, j, err)
		}
		before[id] = snap(id, fmt.Sprintf("pause-%d", i))
	}
	paused.Signal(syscall.SIGCONT)
	// Let the stale attempts run into their fences: they stream a token
	// every 50 ms, renew their leases and try to finish.
	time.Sleep(3 * time.Second)
	for i, id := range ids {
		after := snap(id, fmt.Sprintf("pause-%d", i))
		b := before[id]
		if after.events != b.events || after.history != b.history || fmt.Sprint(after.record) != fmt.Sprint(b.record) {
			t.Errorf("job %s changed after its worker came back: events %d→%d, history %d→%d\nbefore %v\nafter  %v",
				id, b.events, after.events, b.history, after.history, b.record, after.record)
		}
		evs, err := rd.Client().LRange(ctx, rkeys.Events(id), -1, -1).Result()
		if err != nil || len(evs) != 1 || !strings.HasPrefix(evs[0], "done ") {
			t.Errorf("job %s: the log does not end with its final event: %v %v", id, evs, err)
		}
	}
	if !strings.Contains(strings.Join(paused.Logs(), "\n"), "attempt superseded") {
		t.Error("the paused worker never noticed it was fenced out")
	}
}

// The record of a session's queued head job is lost: the next job of the
// session runs within 5 s.
func TestLostHeadRecordDoesNotBlockItsSession(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 0, nil)
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := c.Submit(ctx, client.SubmitRequest{SessionID: "lost", Message: "first"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Submit(ctx, client.SubmitRequest{SessionID: "lost", Message: "second"})
	if err != nil {
		t.Fatal(err)
	}
	if err := rd.Client().Del(ctx, rkeys.Job(first.JobID)).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	lag := machineLag()
	testkit.StartProc(t, "worker", workerBin, fleetEnv(rd.URL(), nil))
	j, err := c.Wait(ctx, second.JobID)
	if err != nil || j.Status != "succeeded" || j.Result.Content != "echo: second" {
		t.Fatalf("second job: %+v %v", j, err)
	}
	// Within 5 s, plus however late the machine itself ran meanwhile.
	if took, noise := time.Since(start), lag(); took > 5*time.Second+noise {
		t.Errorf("the second job ran %s after the worker started, want within 5s (+%s the machine ran late)", took, noise)
	}
	if r := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs/"+first.JobID, nil, nil); r.Status != http.StatusNotFound {
		t.Errorf("the lost job: %d %s", r.Status, r.Raw)
	}
}

// A job whose record was lost after it ran is submitted again with its
// Idempotency-Key: a new job under the same id that runs.
func TestRepostOfALostJobRuns(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, nil)
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := client.SubmitRequest{SessionID: "again", Message: "once more", IdempotencyKey: "lost-key-1"}
	sub, err := c.Submit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if j, err := c.Wait(ctx, sub.JobID); err != nil || j.Status != "succeeded" {
		t.Fatalf("first run: %+v %v", j, err)
	}
	if err := rd.Client().Del(ctx, rkeys.Job(sub.JobID), rkeys.Events(sub.JobID)).Err(); err != nil {
		t.Fatal(err)
	}
	again, err := c.Submit(ctx, req)
	if err != nil || again.Replayed || again.JobID != sub.JobID {
		t.Fatalf("re-POST: %+v %v", again, err)
	}
	j, err := c.Wait(ctx, again.JobID)
	if err != nil || j.Status != "succeeded" || j.Result.Content != "echo: once more" {
		t.Fatalf("the re-POSTed job: %+v %v", j, err)
	}
}

// Timeouts fit LLMs: a steady 4 s generation passes a 2 s first-token and 1 s
// idle timeout in one attempt; a provider silent for 3 s fails with `timeout`
// after about the 1 s first-token timeout.
func TestTimeoutsFitLongGenerations(t *testing.T) {
	run := func(t *testing.T, step llmfake.Step, firstToken string) (client.Job, time.Duration, *llmfake.Fake) {
		rd := testkit.StartRedis(t)
		fake := llmfake.NewOpenAI(t)
		fake.Always(step)
		apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{
			"CHATFLEET_LLM_FIRST_TOKEN_TIMEOUT": firstToken, "CHATFLEET_LLM_IDLE_TIMEOUT": "1s",
			"CHATFLEET_MAX_RETRIES": "0", "CHATFLEET_ON_ALL_PROVIDERS_DOWN": "fail",
		}))
		c := client.New(apis[0].URL())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		lag := machineLag()
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "slow", Message: "one two three four five six seven eight"})
		if err != nil {
			t.Fatal(err)
		}
		j, err := c.Wait(ctx, sub.JobID)
		if err != nil {
			t.Fatal(err)
		}
		// The time less however late the machine itself ran meanwhile.
		return j, time.Since(start) - lag(), fake
	}
	t.Run("a steady long generation", func(t *testing.T) {
		// 10 words 450 ms apart: about 4 s in all, never 1 s without a token.
		j, took, fake := run(t, llmfake.Step{TokenDelay: 450 * time.Millisecond}, "2s")
		if j.Status != "succeeded" || j.Attempts != 1 || fake.Calls() != 1 || took < 4*time.Second {
			t.Fatalf("job %+v %+v after %s, %d upstream calls", j, j.Error, took, fake.Calls())
		}
	})
	t.Run("a silent provider", func(t *testing.T) {
		j, took, fake := run(t, llmfake.Step{FirstByteDelay: 3 * time.Second}, "1s")
		if j.Status != "failed" || j.Error == nil || j.Error.Code != "timeout" || fake.Calls() != 1 {
			t.Fatalf("job %+v %+v, %d upstream calls", j, j.Error, fake.Calls())
		}
		if took > 2500*time.Millisecond { // the 3 s answer would come later
			t.Errorf("the timeout took %s (less the machine's lateness), want about 1s", took)
		}
		t.Logf("failed with %q after %s", j.Error.Message, took.Round(time.Millisecond))
	})
}

// submitStreaming submits n jobs of sessions prefix-0… and follows each until
// it has streamed a few events.
func submitStreaming(ctx context.Context, t *testing.T, c *client.Client, prefix string, n int) ([]string, []*followed) {
	t.Helper()
	var ids []string
	var streams []*followed
	for i := range n {
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("%s-%d", prefix, i), Message: fmt.Sprintf("job %d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sub.JobID)
		streams = append(streams, follow(ctx, c, sub.JobID))
	}
	waitUntil(t, 10*time.Second, "every job streaming", func() bool {
		for _, s := range streams {
			if s.count() < 3 {
				return false
			}
		}
		return true
	})
	return ids, streams
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Redis frozen (SIGSTOP) for ten leases while six jobs stream on two live
// workers, one of which is SIGKILLed during the freeze: the live worker's
// jobs are not taken over (one attempt each, no retry), the dead one's are,
// once Redis is back and its leases stay unrenewed.
func TestRedisStallIsNotTakenForDeadWorkers(t *testing.T) {
	rd := testkit.StartRedis(t)
	extra := map[string]string{"CHATFLEET_SIM_TOKENS": "60", "CHATFLEET_SIM_TOKEN_DELAY": "250ms",
		"CHATFLEET_JOB_LEASE": "2s", "CHATFLEET_WORKER_CONCURRENCY": "3"}
	apis, workers := fleet(t, rd, 1, 2, extra)
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var ids []string
	for i := range 6 {
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("stall-%d", i), Message: "a long one"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sub.JobID)
	}
	waitUntil(t, 10*time.Second, "six running jobs, three on each worker", func() bool {
		for _, id := range ids {
			if j, err := c.Get(ctx, id); err != nil || j.Status != "active" {
				return false
			}
		}
		return true
	})
	rd.Signal(syscall.SIGSTOP)
	time.Sleep(4 * time.Second)
	workers[1].Signal(syscall.SIGKILL)
	time.Sleep(16 * time.Second) // ten leases in all
	rd.Signal(syscall.SIGCONT)

	attempts := map[int]int{}
	for _, id := range ids {
		j, err := c.Wait(ctx, id)
		if err != nil || j.Status != "succeeded" {
			t.Fatalf("job %s: %+v %v", id, j, err)
		}
		attempts[j.Attempts]++
	}
	if attempts[1] != 3 || attempts[2] != 3 {
		t.Fatalf("jobs by attempts %v, want 3 of the live worker's with one and 3 of the killed worker's with two", attempts)
	}
	if v, _ := labelled(t, workers[0].URL(), "chatfleet_job_takeovers_total"); v != 3 {
		t.Fatalf("the live worker took over %v jobs, want the killed worker's 3", v)
	}
}
