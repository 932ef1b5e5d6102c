package orchestration

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

type rig struct {
	st    *store.Store
	queue *asynq.Client
	insp  *asynq.Inspector
}

// startRig runs a real asynq worker with the pipeline on a private Redis.
func startRig(t *testing.T, prov llm.Provider) rig {
	t.Helper()
	rd := testkit.StartRedis(t)
	c := rd.Client()
	insp := asynq.NewInspectorFromRedisClient(c)
	st := store.New(c, insp, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
	w := NewWorker(c, NewPipeline(st, prov, zerolog.New(io.Discard), 5*time.Second), zerolog.New(io.Discard),
		WorkerOptions{Concurrency: 4, PollInterval: 10 * time.Millisecond, ShutdownTimeout: 2 * time.Second})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	return rig{st: st, queue: asynq.NewClientFromRedisClient(c), insp: insp}
}

func (r rig) submit(t *testing.T, id string, raw []byte, maxRetry int) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := r.st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: tasks.QueueName("normal"), CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.queue.Enqueue(asynq.NewTask(tasks.TypeChatComplete, raw, asynq.TaskID(id),
		asynq.Queue(tasks.QueueName("normal")), asynq.MaxRetry(maxRetry), asynq.Retention(time.Hour))); err != nil {
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
	r := startRig(t, llm.NewSim(llm.SimConfig{}))
	id := tasks.NewJobID()
	r.submit(t, id, []byte(`{"v":7,"job_id":"`+id+`"}`), 5)
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

// A provider that keeps failing is retried up to the limit, then the job fails
// with the provider's error and its attempts counted.
func TestRetryableFailuresRetryThenFail(t *testing.T) {
	r := startRig(t, llm.NewSim(llm.SimConfig{FailRate: 1}))
	id := tasks.NewJobID()
	raw, _ := tasks.ChatPayload{JobID: id, Tenant: "t", SessionID: "s", Message: "m", Priority: "normal", SubmittedAt: time.Now()}.Encode()
	r.submit(t, id, raw, 1)
	j := r.waitFinished(t, id)
	if j.Status != store.StatusFailed || j.Attempts != 2 || j.Error == nil || j.Error.Code != "provider_error" {
		t.Fatalf("record %+v %+v", j, j.Error)
	}
	if h, _ := r.st.History(context.Background(), "t", "s"); len(h) != 0 {
		t.Fatalf("a failed job must not enter history: %+v", h)
	}
}
