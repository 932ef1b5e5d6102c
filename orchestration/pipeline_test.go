package orchestration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
)

type rig struct {
	st    *store.Store
	jm    *jobs.Manager
	queue *asynq.Client
	insp  *asynq.Inspector
}

// startRig runs a real asynq worker with the pipeline on a private Redis.
func startRig(t *testing.T, prov llm.Provider, maxRetries int, tune ...func(*Pipeline)) rig {
	t.Helper()
	rd := testkit.StartRedis(t)
	c := rd.Client()
	insp := asynq.NewInspectorFromRedisClient(c)
	st := store.New(c, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
	jm := jobs.New(st, asynq.NewClientFromRedisClient(c), insp, jobs.Options{MaxRetries: maxRetries})
	p := NewPipeline(jm, llm.NewChain(prov), PipelineOptions{
		MaxRetries: maxRetries, CallTimeout: 5 * time.Second, Coalescing: stream.Coalescing{Window: 5 * time.Millisecond, MaxBytes: 64},
	})
	for _, f := range tune {
		f(p)
	}
	w := NewWorker(c, p, zerolog.New(io.Discard),
		WorkerOptions{Concurrency: 4, PollInterval: 10 * time.Millisecond, ShutdownTimeout: 2 * time.Second})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	return rig{st: st, jm: jm, queue: asynq.NewClientFromRedisClient(c), insp: insp}
}

func (r rig) submit(t *testing.T, id string, raw []byte) {
	r.submitAs(t, id, raw, 5)
}

func (r rig) submitAs(t *testing.T, id string, raw []byte, asynqMaxRetry int) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := r.st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: tasks.QueueName("normal"), CreatedAt: time.Now(), Payload: raw}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.queue.Enqueue(asynq.NewTask(tasks.TypeChatComplete, raw, asynq.TaskID(id),
		asynq.Queue(tasks.QueueName("normal")), asynq.MaxRetry(asynqMaxRetry), asynq.Retention(time.Hour))); err != nil {
		t.Fatal(err)
	}
}

func (r rig) waitFinished(t *testing.T, id string) store.Job {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		j, err := r.st.Get(context.Background(), id)
		if err == nil && store.Terminal(j.Status) {
			return j
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("job %s did not finish", id)
	return store.Job{}
}

// A payload no retry can fix fails at once, with the reason, and is archived
// after one attempt even though retries are allowed.
func TestUndecodablePayloadFailsWithoutRetry(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{}), 5)
	id := tasks.NewJobID("t", "s")
	r.submit(t, id, []byte(`{"v":2,"job_id":"`+id+`"}`))
	j := r.waitFinished(t, id)
	if j.Status != store.StatusFailed || j.Error == nil || j.Error.Code != "bad_payload" {
		t.Fatalf("record %+v", j)
	}
	var info *asynq.TaskInfo
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		info, _ = r.insp.GetTaskInfo(tasks.QueueName("normal"), id)
		if info != nil && info.State == asynq.TaskStateArchived {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if info == nil || info.State != asynq.TaskStateArchived || info.Retried != 0 {
		t.Fatalf("task %+v, want archived after one attempt", info)
	}
}

// A takeover runs a job under a task id of its own (tasks.RetryTaskID): an
// undecodable payload found there fails the job's record, not a record
// named after the task.
func TestUndecodablePayloadOfATakeoverTaskFailsItsJob(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{}), 5)
	id := tasks.NewJobID("t", "s")
	raw := []byte(`{"v":2,"job_id":"` + id + `"}`) // required fields missing
	ctx := context.Background()
	if _, _, err := r.st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: tasks.QueueName("normal"), CreatedAt: time.Now(), Payload: raw}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.queue.Enqueue(asynq.NewTask(tasks.TypeChatComplete, raw, asynq.TaskID(tasks.RetryTaskID(id)),
		asynq.Queue(tasks.QueueName("normal")), asynq.MaxRetry(5), asynq.Retention(time.Hour))); err != nil {
		t.Fatal(err)
	}
	j := r.waitFinished(t, id)
	if j.Status != store.StatusFailed || j.Error == nil || j.Error.Code != "bad_payload" {
		t.Fatalf("record %+v, want failed with bad_payload", j)
	}
}

// A task whose payload is of a later release (a rollback left it queued) is
// handed back for a worker of that release: retried without counting an
// attempt, neither archived nor failed, its record still queued.
func TestNewerPayloadIsRetriedNotFailed(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{}), 1)
	id := tasks.NewJobID("t", "s")
	raw := []byte(fmt.Sprintf(`{"v":%d,"job_id":%q,"tenant":"t","session_id":"s","message":"m","priority":"normal","submitted_at":%q,"later":true}`,
		tasks.PayloadVersion+1, id, time.Now().UTC().Format(time.RFC3339Nano)))
	r.submitAs(t, id, raw, 1) // one retry: a counted one would leave none
	var info *asynq.TaskInfo
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		info, _ = r.insp.GetTaskInfo(tasks.QueueName("normal"), id)
		if info != nil && (info.State == asynq.TaskStateRetry || info.State == asynq.TaskStateArchived) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if info == nil {
		t.Fatal("no task")
	}
	if info.State != asynq.TaskStateRetry || info.Retried != 0 ||
		!strings.Contains(info.LastErr, "newer version") || time.Until(info.NextProcessAt) < 30*time.Second {
		t.Fatalf("task %s, %d retries counted, next at %s, last error %q: want it back for retry in about a minute, no retry counted",
			info.State, info.Retried, info.NextProcessAt, info.LastErr)
	}
	j, err := r.st.Get(context.Background(), id)
	if err != nil || j.Status != store.StatusQueued || j.Error != nil || j.Attempts != 0 {
		t.Fatalf("record %+v %+v (%v), want it queued", j, j.Error, err)
	}
}

// A provider that keeps failing is retried up to the limit; then, with
// CHATFLEET_ON_ALL_PROVIDERS_DOWN=fail, the job fails with a plain error (the
// provider's own message stays in the logs) and its attempts counted.
func TestRetryableFailuresRetryThenFail(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{FailRate: 1}), 1, func(p *Pipeline) { p.opt.OnAllDown = AllDownFail })
	id := tasks.NewJobID("t", "s")
	raw, _ := tasks.ChatPayload{JobID: id, Tenant: "t", SessionID: "s", Message: "m", Priority: "normal", SubmittedAt: time.Now()}.Encode()
	r.submit(t, id, raw)
	j := r.waitFinished(t, id)
	if j.Status != store.StatusFailed || j.Attempts != 2 || j.Error == nil || j.Error.Code != "providers_unavailable" ||
		j.Error.Message != "every provider failed" {
		t.Fatalf("record %+v %+v", j, j.Error)
	}
	if h, _ := r.st.History(context.Background(), "t", "s"); len(h) != 0 {
		t.Fatalf("a failed job must not enter history: %+v", h)
	}
}

// By default a job whose providers keep failing ends, after its retries,
// with the degraded reply: succeeded, degraded, kept out of the history.
func TestFailingProvidersDegradeOnTheLastAttempt(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{FailRate: 1}), 1, func(p *Pipeline) { p.opt.DegradedReply = "busy, sorry" })
	id := tasks.NewJobID("t", "s")
	raw, _ := tasks.ChatPayload{JobID: id, Tenant: "t", SessionID: "s", Message: "m", Priority: "normal", SubmittedAt: time.Now()}.Encode()
	r.submit(t, id, raw)
	j := r.waitFinished(t, id)
	if j.Status != store.StatusSucceeded || j.Attempts != 2 || !j.Result.Degraded || j.Result.Content != "busy, sorry" {
		t.Fatalf("record %+v %+v", j, j.Result)
	}
	if h, _ := r.st.History(context.Background(), "t", "s"); len(h) != 0 {
		t.Fatalf("a degraded reply must not enter history: %+v", h)
	}
	evs, _ := r.st.Events(context.Background(), id, 0)
	if len(evs) != 2 || evs[0].Type != store.EventToken || evs[1].Type != store.EventDone {
		t.Fatalf("events %+v", evs)
	}
}

// A request with tools or a response format never gets the degraded reply
// (a canned text would break the caller's parser): it fails with
// providers_unavailable, saying why.
func TestStructuredRequestsGetNoDegradedReply(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{FailRate: 1}), 1, func(p *Pipeline) { p.opt.DegradedReply = "busy, sorry" })
	for name, params := range map[string]*tasks.GenParams{
		"tools":           {Tools: []tasks.Tool{{Type: "function", Function: tasks.FunctionDef{Name: "f"}}}},
		"response_format": {ResponseFormat: &tasks.ResponseFormat{Type: "json_object"}},
	} {
		t.Run(name, func(t *testing.T) {
			id := tasks.NewJobID("t", "s")
			raw, _ := tasks.ChatPayload{JobID: id, Tenant: "t", SessionID: "s", Message: "m", Priority: "normal", SubmittedAt: time.Now(), Params: params}.Encode()
			r.submit(t, id, raw)
			j := r.waitFinished(t, id)
			if j.Status != store.StatusFailed || j.Result != nil || j.Error == nil || j.Error.Code != "providers_unavailable" ||
				!strings.Contains(j.Error.Message, "no degraded reply") {
				t.Fatalf("record %+v %+v", j, j.Error)
			}
		})
	}
}

// A session's later turns wait in Redis, not in a worker: while the first
// runs they have no task in the queue, and each starts after the one before
// it finished, on its first attempt.
func TestLaterTurnsWaitWithoutATask(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{Latency: 300 * time.Millisecond}), 0)
	ctx := context.Background()
	var ids []string
	for i := range 3 {
		id := tasks.NewJobID("t", "s")
		pl := tasks.ChatPayload{JobID: id, Tenant: "t", SessionID: "s", Message: fmt.Sprint("turn ", i), Priority: "normal", SubmittedAt: time.Now()}
		if _, err := r.jm.Submit(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: tasks.QueueName("normal"), CreatedAt: time.Now()}, pl); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids[1:] {
		if _, err := r.insp.GetTaskInfo(tasks.QueueName("normal"), id); !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
			t.Fatalf("a waiting turn has a task: %v", err)
		}
	}
	var prev store.Job
	for i, id := range ids {
		j := r.waitFinished(t, id)
		if j.Status != store.StatusSucceeded || j.Attempts != 1 {
			t.Fatalf("turn %d: %+v %+v", i, j, j.Error)
		}
		if i > 0 && j.StartedAt.Before(prev.FinishedAt) {
			t.Fatalf("turn %d started %s before turn %d finished %s", i, j.StartedAt, i-1, prev.FinishedAt)
		}
		prev = j
	}
}

// A task that reaches a worker before its job's turn (as one enqueued by an
// older API would) runs nothing and uses no attempt: the job runs once its
// turn comes, under a fresh task.
func TestAnEarlyTaskWaitsForItsTurn(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{Latency: 300 * time.Millisecond}), 0)
	var ids []string
	for i := range 2 {
		id := tasks.NewJobID("t", "s")
		raw, _ := tasks.ChatPayload{JobID: id, Tenant: "t", SessionID: "s", Message: fmt.Sprint("turn ", i), Priority: "normal", SubmittedAt: time.Now()}.Encode()
		r.submit(t, id, raw) // both enqueued at once
		ids = append(ids, id)
	}
	a, b := r.waitFinished(t, ids[0]), r.waitFinished(t, ids[1])
	if a.Status != store.StatusSucceeded || b.Status != store.StatusSucceeded || b.Attempts != 1 || b.Task == ids[1] {
		t.Fatalf("first %+v\nsecond %+v %+v", a, b, b.Error)
	}
	if b.StartedAt.Before(a.FinishedAt) {
		t.Fatalf("second started %s before the first finished %s", b.StartedAt, a.FinishedAt)
	}
}

// flaky streams part of a reply and fails on its first call, then answers.
type flaky struct {
	calls atomic.Int32
	sim   *llm.Sim
}

func (f *flaky) Name() string { return "flaky" }

func (f *flaky) Stream(ctx context.Context, req llm.Request, onDelta func(llm.Delta) error) (llm.Reply, error) {
	if f.calls.Add(1) == 1 {
		for _, d := range []string{"partial", " output"} {
			if err := onDelta(llm.Delta{Text: d}); err != nil {
				return llm.Reply{}, err
			}
		}
		return llm.Reply{}, &llm.Error{Provider: "flaky", Retryable: true, Msg: "connection reset mid-stream"}
	}
	return f.sim.Stream(ctx, req, onDelta)
}

// An attempt that fails after streaming tokens is followed by a `retry` event
// before the next attempt's tokens, and `done` comes once, last.
func TestRetryAfterPartialOutputIsAnnounced(t *testing.T) {
	prov := &flaky{sim: llm.NewSim(llm.SimConfig{Tokens: 3})}
	r := startRig(t, prov, 2)
	id := tasks.NewJobID("t", "s")
	raw, _ := tasks.ChatPayload{JobID: id, Tenant: "t", SessionID: "s", Message: "again", Priority: "normal", SubmittedAt: time.Now()}.Encode()
	r.submit(t, id, raw)
	j := r.waitFinished(t, id)
	if j.Status != store.StatusSucceeded || j.Attempts != 2 {
		t.Fatalf("record %+v", j)
	}
	evs, err := r.st.Events(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	var text strings.Builder
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
		types = append(types, ev.Type)
		switch ev.Type {
		case store.EventRetry:
			text.Reset()
		case store.EventToken:
			var d struct{ Delta string }
			_ = json.Unmarshal([]byte(ev.Data), &d)
			text.WriteString(d.Delta)
		}
	}
	got := strings.Join(types, ",")
	if !strings.HasPrefix(got, "token,") || !strings.Contains(got, ",retry,token") || !strings.HasSuffix(got, ",done") || strings.Count(got, "done") != 1 {
		t.Fatalf("event types %s", got)
	}
	if text.String() != j.Result.Content {
		t.Fatalf("tokens after the retry %q, result %q", text.String(), j.Result.Content)
	}
}
