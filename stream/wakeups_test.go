package stream

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

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
			if _, _, err := st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now()}, nil); err != nil {
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
