package stream

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// A job's first token follower on an API process wakes the worker that runs
// it: the deltas it was holding back for nobody (for an hour here) reach the
// follower at once, on one Redis and on a cluster (sharded pub/sub). A
// client that waits for the end only does not.
func TestAFollowerWakesTheJobsWorker(t *testing.T) {
	for name, backend := range map[string]func(testing.TB) testkit.Backend{
		"redis":   func(t testing.TB) testkit.Backend { return testkit.StartRedis(t) },
		"cluster": func(t testing.TB) testkit.Backend { return testkit.StartCluster(t) },
	} {
		t.Run(name, func(t *testing.T) {
			c := backend(t).UniversalClient()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st := store.New(c, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour, Runner: "w1"})
			w := ListenWakeups(ctx, c, "w1", zerolog.Nop())
			id := tasks.NewJobID("t", "s") // in the session's bucket, as on a cluster it must be
			if _, _, err := st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if a, err := st.StartAttempt(ctx, id, "t", "s", id, "", false, time.Minute); err != nil || a.N != 1 {
				t.Fatal(err)
			}
			e := NewEmitter(ctx, attemptOf(st, id, 1), Coalescing{Window: 5 * time.Millisecond, MaxBytes: 1000, Unfollowed: time.Hour})
			defer w.Add(id, e)()
			for _, d := range []string{"a ", "b ", "c "} {
				if err := e.Delta(d); err != nil {
					t.Fatal(err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got := deltas(t, st, id); len(got) != 1 {
				t.Fatalf("unfollowed: %q in the log", got)
			}
			h := NewHub(c, zerolog.Nop())
			defer h.Close()
			h.WakeWith(st.Wake)
			// A client waiting for the whole answer does not hurry the tokens.
			final, err := h.SubscribeFinal(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			defer final.Close()
			time.Sleep(100 * time.Millisecond)
			if got := deltas(t, st, id); len(got) != 1 {
				t.Fatalf("a client waiting for the end woke the worker: %q in the log", got)
			}
			sub, err := h.Subscribe(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			select {
			case ev := <-sub.Events:
				if ev.Seq != 2 || !strings.Contains(ev.Data, `"delta":"b c "`) {
					t.Fatalf("woken: %+v", ev)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the held-back deltas never came")
			}
		})
	}
}

// A wake that arrives between the attempt's start (from which the record
// names this runner) and its emitter's registration is kept and delivered
// when the emitter is added: the follower gets the followed window, not the
// unfollowed one, for the rest of the attempt.
func TestAWakeBeforeTheEmitterIsAddedIsKept(t *testing.T) {
	c := testkit.StartRedis(t).UniversalClient()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := store.New(c, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour, Runner: "w-early"})
	w := ListenWakeups(ctx, c, "w-early", zerolog.Nop())
	id := tasks.NewJobID("t", "s")
	if _, _, err := st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.StartAttempt(ctx, id, "t", "s", id, "", false, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.Wake(ctx, id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.mu.Lock()
		_, kept := w.early[id]
		w.mu.Unlock()
		if kept {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the wake for a job without an emitter here was not kept")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// the follower that sent the wake listens
	ps := c.Subscribe(ctx, rkeys.LiveChannel(id))
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	e := NewEmitter(ctx, attemptOf(st, id, 1), Coalescing{Window: 5 * time.Millisecond, MaxBytes: 1000, Unfollowed: time.Hour})
	defer w.Add(id, e)()
	// The first delta goes out at once (it tells whether anyone listens);
	// the ones after it go out live at the window they are given.
	for i, d := range []string{"a ", "b ", "c "} {
		if err := e.Delta(d); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := ps.ReceiveMessage(rctx)
		cancel()
		if err != nil || !strings.Contains(m.Payload, `"delta":"`+d+`"`) {
			t.Fatalf("delta %d waits for the unfollowed window: the early wake was lost (%v %v)", i+1, m, err)
		}
	}
}
