package stream

import (
	"context"
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
		if _, _, _, err := st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: session, Queue: "q", CreatedAt: time.Now()}, nil); err != nil {
			t.Fatal(err)
		}
		if a, err := st.StartAttempt(ctx, id, "t", session, id, false, time.Minute); err != nil || a.N != 1 {
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
		if _, err := st.AppendEvent(ctx, id, 1, store.TokenEvent{Delta: id}); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-subs[i].Events:
			if ev.Seq != 1 || ev.Type != "token" {
				t.Fatalf("job %s: got %+v", id, ev)
			}
		case <-subs[i].Lagged:
			t.Fatalf("job %s: lagged instead of a live event", id)
		case <-time.After(2 * time.Second):
			t.Fatalf("job %s (bucket %d): no live event within 2s", id, rkeys.Bucket(id))
		}
	}
}
