package jobs

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// A task whose payload cannot be decoded fails the job its id names, also
// when it is a takeover's task (the job id and a suffix).
func TestFailUndecodableFailsTheJobOfATakeoverTask(t *testing.T) {
	m, st := newManager(t)
	ctx := context.Background()
	nj, p := submission(tasks.NewJobID("t", "s"), "s", "h")
	if _, err := m.Submit(ctx, nj, p); err != nil {
		t.Fatal(err)
	}
	a, err := st.StartAttempt(ctx, nj.ID, "t", "s", nj.ID, "", false, time.Minute)
	if err != nil || a.N != 1 {
		t.Fatalf("start: %+v %v", a, err)
	}
	task := tasks.RetryTaskID(nj.ID)
	if ok, _, _, err := st.TakeOver(ctx, nj.ID, a.Fence, task); err != nil || !ok {
		t.Fatalf("take over: %v %v", ok, err)
	}
	m.FailUndecodable(ctx, task, errors.New("bad payload"))
	j, err := st.Get(ctx, nj.ID)
	if err != nil || j.Status != store.StatusFailed || j.Error == nil || j.Error.Code != "bad_payload" {
		t.Fatalf("the takeover task's job was not failed: %+v %v", j, err)
	}
}

// A re-run of a dead job in the middle of a session goes to the end of the
// session's order, behind the job now unfinished there, and its times start
// again: it is submitted at the re-run and gets its turn when that job ends,
// not when its first run did.
func TestRerunStartsTheJobsTimesAgain(t *testing.T) {
	m, st, c := newManagerOn(t)
	ctx := context.Background()
	first, pFirst := submission(tasks.NewJobID("t", "s"), "s", "h1")
	dead, pDead := submission(tasks.NewJobID("t", "s"), "s", "h2")
	for _, s := range []struct {
		nj store.NewJob
		p  tasks.ChatPayload
	}{{first, pFirst}, {dead, pDead}} {
		if _, err := m.Submit(ctx, s.nj, s.p); err != nil {
			t.Fatal(err)
		}
	}
	// The first job ends and gives the second its turn (turn_at set).
	if _, err := m.finish(ctx, first.ID, "t", "s", 0, store.Outcome{Status: store.StatusSucceeded, Result: &store.Result{Content: "a"}}); err != nil {
		t.Fatal(err)
	}
	handOutAll(t, m)
	if sa, err := st.StartAttempt(ctx, dead.ID, "t", "s", dead.ID, "", false, time.Minute); err != nil || sa.N != 1 || sa.TurnAt.IsZero() {
		t.Fatalf("second job's first run: %+v %v", sa, err)
	}
	// It dies: asynq archives its task and the record fails.
	if err := m.insp.ArchiveTask(dead.Queue, dead.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.finish(ctx, dead.ID, "t", "s", 0, store.Outcome{Status: store.StatusFailed, Error: &store.JobError{Code: "failed", Message: "x"}}); err != nil {
		t.Fatal(err)
	}
	// A later job of the session is unfinished when the dead one is re-run.
	later, pLater := submission(tasks.NewJobID("t", "s"), "s", "h3")
	if _, err := m.Submit(ctx, later, pLater); err != nil {
		t.Fatal(err)
	}
	rerunAt := time.Now()
	if err := m.Rerun(ctx, dead.ID); err != nil {
		t.Fatal(err)
	}
	payload, err := st.Payload(ctx, dead.ID)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tasks.DecodeChat(payload)
	if err != nil {
		t.Fatal(err)
	}
	if p.SubmittedAt.Before(rerunAt) {
		t.Fatalf("the re-run keeps its first submit time %v (re-run at %v)", p.SubmittedAt, rerunAt)
	}
	if at, err := c.HGet(ctx, rkeys.Job(dead.ID), "turn_at").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("the re-run keeps the turn of its first run: turn_at %q %v", at, err)
	}
	// It waits behind the later job: a task of it that arrived now would be told so.
	handOutAll(t, m)
	if sa, err := st.StartAttempt(ctx, dead.ID, "t", "s", dead.ID, tasks.RetryTaskID(dead.ID), false, time.Minute); err != nil || sa.Head != later.ID {
		t.Fatalf("the re-run does not wait behind the session's unfinished job: %+v %v", sa, err)
	}
	laterEnds := time.Now()
	f, err := st.Finish(ctx, later.ID, "t", "s", 0, store.Outcome{Status: store.StatusSucceeded, Result: &store.Result{Content: "b"}})
	if err != nil || f.Next == nil || f.Next.ID != dead.ID {
		t.Fatalf("the later job's end does not give the re-run its turn: %+v %v", f, err)
	}
	sa, err := st.StartAttempt(ctx, dead.ID, "t", "s", f.Next.Task, "", false, time.Minute)
	if err != nil || sa.N != 1 {
		t.Fatalf("the re-run's attempt: %+v %v", sa, err)
	}
	// Redis's clock stamps turn_at: a millisecond of slack against this one.
	if sa.TurnAt.Before(laterEnds.Add(-time.Millisecond)) {
		t.Fatalf("the re-run's turn came at %v, before the job it waited for ended (%v)", sa.TurnAt, laterEnds)
	}
}
