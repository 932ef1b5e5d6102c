package jobs

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

func newMetrics() *superviseMetrics {
	return &superviseMetrics{
		takeovers:  prometheus.NewCounter(prometheus.CounterOpts{Name: "t"}),
		reconciled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "r"}, []string{"action"}),
	}
}

// An attempt whose lease expired is taken over: the job is queued under a new
// task, and the old attempt can no longer write.
func TestRescueTakesOverAnExpiredAttempt(t *testing.T) {
	m, st := newManager(t)
	ctx := context.Background()
	nj, p := submission(tasks.NewJobID("t", "s"), "s", "h")
	if _, err := m.Submit(ctx, nj, p); err != nil {
		t.Fatal(err)
	}
	a, err := st.StartAttempt(ctx, nj.ID, "t", "s", nj.ID, "", true, 30*time.Millisecond)
	if err != nil || a.N != 1 {
		t.Fatalf("start: %+v %v", a, err)
	}
	time.Sleep(50 * time.Millisecond) // the worker "died": no renewal
	sm := newMetrics()
	m.rescue(ctx, sm, time.Second, zerolog.New(io.Discard))
	if testutil.ToFloat64(sm.takeovers) != 1 {
		t.Fatal("no takeover")
	}
	j, _ := st.Get(ctx, nj.ID)
	if j.Status != store.StatusQueued || j.Task == nj.ID || tasks.JobOfTask(j.Task) != nj.ID {
		t.Fatalf("record after takeover: %+v", j)
	}
	if info, err := m.insp.GetTaskInfo(nj.Queue, j.Task); err != nil || info.State != asynq.TaskStatePending {
		t.Fatalf("new task: %+v %v", info, err)
	}
	if _, err := st.AppendEvent(ctx, nj.ID, 1, 0, store.TokenEvent{Delta: "stale"}); !errors.Is(err, store.ErrSuperseded) {
		t.Fatalf("the old attempt wrote: %v", err)
	}
	// The old task, if asynq runs it again, finds the job run by another task.
	if a, err := st.StartAttempt(ctx, nj.ID, "t", "s", nj.ID, "", false, time.Minute); err != nil || a.N != 0 {
		t.Fatalf("the old task started an attempt: %+v %v", a, err)
	}
	if a, err := st.StartAttempt(ctx, nj.ID, "t", "s", j.Task, "", false, time.Minute); err != nil || a.N != 2 {
		t.Fatalf("the new task: %+v %v", a, err)
	}
}

// The reconciler schedules again a queued job that is neither in the
// scheduler nor in the queue, and releases the session turn of a job whose
// record is gone.
func TestReconcilerRepairsLostTasksAndRecords(t *testing.T) {
	m, st, rdb := newManagerOn(t)
	ctx := context.Background()
	lostTask, p := submission(tasks.NewJobID("t", "s1"), "s1", "h")
	raw, _ := p.Encode()
	lostTask.Payload = raw
	if _, _, err := st.Create(ctx, lostTask); err != nil { // recorded, never enqueued
		t.Fatal(err)
	}
	lostRecord, p2 := submission(tasks.NewJobID("t", "s2"), "s2", "h")
	if _, err := m.Submit(ctx, lostRecord, p2); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(ctx, rkeys.Job(lostRecord.ID)).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond) // past OrphanAfter
	for _, nj := range []store.NewJob{lostTask, lostRecord} {
		if err := st.CheckAt(ctx, store.Unfinished{Tenant: nj.Tenant, SessionID: nj.SessionID, ID: nj.ID}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	sm := newMetrics()
	m.reconcileDue(ctx, sm, zerolog.New(io.Discard))
	if testutil.ToFloat64(sm.reconciled.WithLabelValues(actionRequeued)) != 1 || testutil.ToFloat64(sm.reconciled.WithLabelValues(actionReleased)) != 1 {
		t.Fatal("the reconciler did not requeue one job and release one")
	}
	if in, err := st.IsScheduled(ctx, lostTask.ID); err != nil || !in {
		t.Fatalf("the lost job is not in the scheduler: %v %v", in, err)
	}
	handOutAll(t, m)
	j, _ := st.Get(ctx, lostTask.ID)
	if info, err := m.insp.GetTaskInfo(lostTask.Queue, j.Task); err != nil || info.State != asynq.TaskStatePending {
		t.Fatalf("requeued task: %+v %v", info, err)
	}
	if head, _ := st.SessionHead(ctx, "t", "s2"); head != "" {
		t.Fatalf("the lost record still holds its session: %q", head)
	}
}

// Supervising twice with one registry (two managers in one process) shares
// the metrics instead of panicking on their second registration.
func TestSuperviseTwiceOnOneRegistry(t *testing.T) {
	m, _ := newManager(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	m.Supervise(ctx, SuperviseOptions{Registerer: reg, Log: zerolog.Nop()})
	m.Supervise(ctx, SuperviseOptions{Registerer: reg, Log: zerolog.Nop()})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	if !names["chatfleet_job_takeovers_total"] || !names["chatfleet_reconciled_jobs_total"] {
		t.Fatalf("metrics %v", names)
	}
}
