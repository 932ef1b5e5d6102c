package jobs

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

func newManager(t *testing.T) (*Manager, *store.Store) {
	m, st, _ := newManagerOn(t)
	return m, st
}

func newManagerOn(t *testing.T) (*Manager, *store.Store, *redis.Client) {
	rd := testkit.StartRedis(t)
	c := rd.Client()
	st := store.New(c, store.Options{Retention: time.Hour, HistoryMaxMessages: 4, HistoryTTL: time.Hour})
	q := asynq.NewClientFromRedisClient(c)
	return New(st, q, asynq.NewInspectorFromRedisClient(c), Options{MaxRetries: 1, OrphanAfter: 50 * time.Millisecond}), st, c
}

// handOutAll hands every job waiting in the scheduler to asynq, as the
// workers' dispatchers do.
func handOutAll(t *testing.T, m *Manager) {
	t.Helper()
	got, _, _, err := m.st.Dispatch(context.Background(), 1000, lanes)
	if err != nil {
		t.Fatal(err)
	}
	m.handOut(context.Background(), got, make(chan struct{}, handOutParallel), nil, zerolog.Nop())
}

func submission(id, session, hash string) (store.NewJob, tasks.ChatPayload) {
	nj := store.NewJob{ID: id, Tenant: "t", SessionID: session, Queue: tasks.QueueName(tasks.PriorityNormal), BodyHash: hash, CreatedAt: time.Now().UTC()}
	return nj, tasks.ChatPayload{JobID: id, Tenant: "t", SessionID: session, Message: "hi", Priority: tasks.PriorityNormal, SubmittedAt: nj.CreatedAt}
}

func TestSubmitReplaysAndRefusesConflicts(t *testing.T) {
	m, _ := newManager(t)
	ctx := context.Background()
	id := tasks.IdempotentJobID("t", "key-1", "s")
	nj, p := submission(id, "s", "h1")
	nj.KeyHash = tasks.IdempotencyKeyHash("t", "key-1")
	first, err := m.Submit(ctx, nj, p)
	if err != nil || first.Replayed || first.Job.Status != store.StatusQueued {
		t.Fatalf("first submit: %+v %v", first, err)
	}
	again, err := m.Submit(ctx, nj, p)
	if err != nil || !again.Replayed || again.Job.ID != id {
		t.Fatalf("replay: %+v %v", again, err)
	}
	nj.BodyHash = "h2"
	if _, err := m.Submit(ctx, nj, p); !errors.Is(err, ErrConflict) {
		t.Fatalf("different body: %v", err)
	}
	// The same key with another session makes another id (the session's
	// bucket): the key's binding still tells it is a conflict.
	other, op := submission(tasks.IdempotentJobID("t", "key-1", "s-other"), "s-other", "h3")
	other.KeyHash = nj.KeyHash
	if _, err := m.Submit(ctx, other, op); !errors.Is(err, ErrConflict) {
		t.Fatalf("same key, another session: %v", err)
	}
	if _, err := m.Get(ctx, other.ID, "t"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the conflicting submit left a record: %v", err)
	}
	if in, err := m.st.IsScheduled(ctx, id); err != nil || !in {
		t.Fatalf("the job is not in the scheduler: %v %v", in, err)
	}
	handOutAll(t, m)
	info, err := m.insp.GetTaskInfo(nj.Queue, id)
	if err != nil || info.State != asynq.TaskStatePending {
		t.Fatalf("task: %+v %v", info, err)
	}
	if _, err := m.Get(ctx, id, "other"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("another tenant read the job: %v", err)
	}
}

func TestCancelQueuedRemovesTheTask(t *testing.T) {
	m, _ := newManager(t)
	ctx := context.Background()
	nj, p := submission(tasks.NewJobID("t", "s"), "s", "h")
	sub, err := m.Submit(ctx, nj, p)
	if err != nil {
		t.Fatal(err)
	}
	handOutAll(t, m)
	j, err := m.Cancel(ctx, sub.Job, "test")
	if err != nil || j.Status != store.StatusCanceled {
		t.Fatalf("cancel: %+v %v", j, err)
	}
	if _, err := m.insp.GetTaskInfo(nj.Queue, nj.ID); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Fatalf("task still there: %v", err)
	}
	if _, err := m.Cancel(ctx, sub.Job, "again"); !errors.Is(err, ErrFinished) {
		t.Fatalf("second cancel: %v", err)
	}
}

func TestReconcileFailsLostJobs(t *testing.T) {
	m, st := newManager(t)
	ctx := context.Background()
	// A record whose enqueue never happened.
	nj, _ := submission(tasks.NewJobID("t", "s"), "s", "h")
	if _, _, err := st.Create(ctx, nj); err != nil {
		t.Fatal(err)
	}
	j, _ := m.Get(ctx, nj.ID, "t")
	j, err := m.Reconcile(ctx, j)
	if err != nil || j.Status != store.StatusQueued {
		t.Fatalf("a fresh record must be given time to be enqueued: %+v %v", j, err)
	}
	time.Sleep(60 * time.Millisecond) // past OrphanAfter
	if j, _ = m.Get(ctx, nj.ID, "t"); j.Status != store.StatusQueued {
		t.Fatalf("a read changed the job: %+v", j)
	}
	j, err = m.Reconcile(ctx, j)
	if err != nil || j.Status != store.StatusFailed || j.Error == nil || j.Error.Code != "lost" {
		t.Fatalf("lost job: %+v %v", j, err)
	}
	if head, _ := st.SessionHead(ctx, "t", "s"); head != "" {
		t.Fatalf("a lost job must release its session: head %q", head)
	}
}

func TestRerunOnlyArchivedJobs(t *testing.T) {
	m, _ := newManager(t)
	ctx := context.Background()
	nj, p := submission(tasks.NewJobID("t", "s"), "s", "h")
	if _, err := m.Submit(ctx, nj, p); err != nil {
		t.Fatal(err)
	}
	handOutAll(t, m)
	if err := m.Rerun(ctx, nj.ID); !errors.Is(err, ErrNotArchived) {
		t.Fatalf("rerun of a pending job: %v", err)
	}
	list, err := m.ListArchived()
	if err != nil || len(list) != 0 {
		t.Fatalf("archived: %+v %v", list, err)
	}
}

// A submit goes on when its caller hangs up (record and task are written
// whole), and stops when the caller cancels it because Redis does not answer
// (the API's gate does), leaving nothing behind.
func TestSubmitStopsOnlyForAnUnavailableRedis(t *testing.T) {
	m, _ := newManager(t)
	hungUp, cancel := context.WithCancel(context.Background())
	cancel()
	nj, p := submission(tasks.NewJobID("t", "s-hung-up"), "s-hung-up", "h")
	if sub, err := m.Submit(hungUp, nj, p); err != nil || sub.Job.Status != store.StatusQueued {
		t.Fatalf("submit whose client hung up: %+v %v", sub, err)
	}
	if _, err := m.Get(context.Background(), nj.ID, "t"); err != nil {
		t.Fatalf("the job of a client that hung up: %v", err)
	}

	stopped, stop := context.WithCancelCause(context.Background())
	stop(fmt.Errorf("redis does not answer: %w", store.ErrUnavailable))
	nj, p = submission(tasks.NewJobID("t", "s-stopped"), "s-stopped", "h")
	if sub, err := m.Submit(stopped, nj, p); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("submit stopped for an unavailable Redis: %+v %v, want ErrUnavailable", sub, err)
	}
	if _, err := m.Get(context.Background(), nj.ID, "t"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a stopped submit left its job: %v", err)
	}
}
