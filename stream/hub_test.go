package stream

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// On Redis Cluster the hub follows jobs of every bucket over one pub/sub
// connection per shard, and each job's events arrive live: published with
// SPUBLISH on the job's shard, which a plain PUBLISH would not reach.
func TestHubOnClusterKeepsOneConnectionPerShard(t *testing.T) {
	c := testkit.StartCluster(t).Client()
	st := store.New(c, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
	h := NewHub(c, zerolog.Nop())
	defer h.Close()
	ctx := context.Background()

	buckets := map[int]bool{}
	var subs []*Subscription
	var ids []string
	for i := 0; len(buckets) < rkeys.Buckets; i++ {
		session := fmt.Sprint("s", i)
		if buckets[rkeys.SessionBucket("t", session)] {
			continue
		}
		buckets[rkeys.SessionBucket("t", session)] = true
		id := tasks.NewJobID("t", session)
		if _, _, err := st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: session, Queue: "q", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if a, err := st.StartAttempt(ctx, id, "t", session, id, "", false, time.Minute); err != nil || a.N != 1 {
			t.Fatalf("start %s: %+v %v", id, a, err)
		}
		sub, err := h.Subscribe(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		subs, ids = append(subs, sub), append(ids, id)
	}
	h.mu.Lock()
	conns := len(h.conns)
	h.mu.Unlock()
	if conns != 3 {
		t.Fatalf("%d pub/sub connections for %d jobs over 3 shards, want 3", conns, len(ids))
	}
	for i, id := range ids {
		if _, err := st.AppendEvent(ctx, id, 1, 0, store.TokenEvent{Delta: id}); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-subs[i].Events:
			if ev.Seq != 1 || ev.Type != "token" {
				t.Fatalf("job %s: got %+v", id, ev)
			}
		case <-subs[i].Lagged:
			t.Fatalf("job %s: lagged instead of a live event", id)
		case <-time.After(5 * time.Second): // a live event, not the catch-up at the next heartbeat; 6 nodes and the race detector share 2 cores
			t.Fatalf("job %s (bucket %d): no live event within 5s", id, rkeys.Bucket(id))
		}
	}
}

// A followed job's slot moves to another master (resharding): the old master
// drops the sharded subscription, and the hub follows the channel on the new
// master, so that the job's later events arrive live again.
func TestHubFollowsAChannelWhoseSlotMoved(t *testing.T) {
	cl := testkit.StartCluster(t)
	c := cl.Client()
	st := store.New(c, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
	h := NewHub(c, zerolog.New(zerolog.NewTestWriter(t)))
	defer h.Close()
	ctx := context.Background()
	id := tasks.NewJobID("t", "moving")
	if _, _, err := st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: "moving", Queue: "q", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if a, err := st.StartAttempt(ctx, id, "t", "moving", id, "", false, time.Minute); err != nil || a.N != 1 {
		t.Fatalf("start: %+v %v", a, err)
	}
	sub, err := h.Subscribe(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	from := cl.MasterOf(rkeys.Job(id))
	var to *testkit.Redis
	for _, m := range cl.Masters() {
		if m != from {
			to = m
			break
		}
	}
	cl.MoveSlot(rkeys.Slot(rkeys.Job(id)), from, to)

	deadline := time.Now().Add(10 * time.Second)
	for seq := int64(1); ; seq++ {
		a, err := st.AppendEvent(ctx, id, 1, 0, store.TokenEvent{Delta: "x"})
		if err != nil || a.Seq != seq {
			t.Fatalf("append %d: %d %v", seq, a.Seq, err)
		}
		select {
		case ev := <-sub.Events:
			if ev.Seq == seq {
				h.mu.Lock()
				_, onNew := h.conns[to.Addr()]
				h.mu.Unlock()
				if !onNew {
					t.Fatalf("event %d arrived, but no connection to the new master %s", seq, to.Addr())
				}
				t.Logf("event %d arrived live after the move", seq)
				return
			}
		case <-sub.Lagged:
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("no live event within 10s of the slot's move")
		}
	}
}

func TestMovedTo(t *testing.T) {
	slot, addr, ok := movedTo(errors.New("MOVED 13736 127.0.0.1:24889"))
	if !ok || slot != 13736 || addr != "127.0.0.1:24889" {
		t.Fatalf("got %d %q %v", slot, addr, ok)
	}
	for _, s := range []string{"MOVED x 127.0.0.1:1", "ASK 1 127.0.0.1:1", "MOVED 1", "i/o timeout"} {
		if _, _, ok := movedTo(errors.New(s)); ok {
			t.Fatalf("%q read as MOVED", s)
		}
	}
}
