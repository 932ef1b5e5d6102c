package jobs

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/store"
)

// While jobs wait in the scheduler, a round waits for a batch of free slots
// (or the linger's end) instead of handing out a job per freed slot; once
// the scheduler is empty, a freed slot asks nothing of it.
func TestDispatcherHandsOutInBatches(t *testing.T) {
	m, st := newManager(t)
	ctx := context.Background()
	for i := range 20 {
		nj, p := submission(fmt.Sprintf("job-%02d", i), fmt.Sprintf("s%d", i), "h")
		if _, err := m.Submit(ctx, nj, p); err != nil {
			t.Fatal(err)
		}
	}
	var free atomic.Int64
	d := m.NewDispatcher(DispatchOptions{Free: func() int { return int(free.Load()) }, Batch: 4, Linger: time.Hour, Log: zerolog.Nop()})
	waiting := func() int { t.Helper(); return waitingInScheduler(t, st) }
	startAll := func(n int) {
		for range n {
			d.Started()
		}
	}
	free.Store(10)
	d.round(ctx)
	if w := waiting(); w != 10 || !d.backlog {
		t.Fatalf("10 free slots left %d waiting (backlog %v), want 10", w, d.backlog)
	}
	startAll(10)
	free.Store(1)
	if _, wait := d.round(ctx); wait.IsZero() || waiting() != 10 {
		t.Fatalf("one free slot of a batch of 4 was served at once (linger until %v, %d waiting)", wait, waiting())
	}
	free.Store(4)
	if _, wait := d.round(ctx); !wait.IsZero() || waiting() != 6 {
		t.Fatalf("a batch of free slots was not served: %d waiting", waiting())
	}
	startAll(4)
	// The linger's end serves a slot that no batch follows.
	free.Store(1)
	d.o.Linger = time.Millisecond
	d.round(ctx)
	time.Sleep(5 * time.Millisecond)
	d.round(ctx)
	if w := waiting(); w != 5 {
		t.Fatalf("a slot waited past the linger: %d waiting, want 5", w)
	}
	startAll(1)
	free.Store(100)
	d.round(ctx)
	if w := waiting(); w != 0 || d.backlog {
		t.Fatalf("the rest: %d waiting, backlog %v", w, d.backlog)
	}
}

// A task handed out for a free slot here may be taken by another worker:
// past its pickup time the slot is offered again at once, not when a slot
// of this worker next frees up or at the once-a-second round.
func TestDispatcherOffersASlotAgainAfterItsPickup(t *testing.T) {
	m, st := newManager(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range 10 {
		nj, p := submission(fmt.Sprintf("job-%02d", i), fmt.Sprintf("s%d", i), "h")
		if _, err := m.Submit(ctx, nj, p); err != nil {
			t.Fatal(err)
		}
	}
	// Two slots stay free: every task handed out goes to another worker
	// (this one never starts one).
	d := m.NewDispatcher(DispatchOptions{Free: func() int { return 2 }, Pickup: 30 * time.Millisecond, Log: zerolog.Nop()})
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	start := time.Now()
	for {
		n := waitingInScheduler(t, st)
		if n == 0 {
			break
		}
		// Only the slots' pickups can have handed out 10 before the round
		// of once a second comes.
		if time.Since(start) > dispatchEvery*9/10 {
			t.Fatalf("%d of 10 jobs still wait after %v: the free slots were not offered again after their pickup", n, time.Since(start))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}

// waitingInScheduler counts the jobs waiting in the scheduler, every lane.
func waitingInScheduler(t *testing.T, st *store.Store) int {
	t.Helper()
	b, err := st.SchedStatus(context.Background(), []string{"high", "normal", "low"}, 5)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range b.Lanes {
		n += l.Queued
	}
	return n
}
