package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// A tenant's listing keeps no entry older than the retention (each create
// trims it), and a purged job leaves it at once.
func TestListingIsTrimmedAndPurged(t *testing.T) {
	c := testkit.StartRedis(t).Client()
	s := New(c, Options{Retention: time.Minute, HistoryMaxMessages: 4, HistoryTTL: time.Hour})
	ctx := context.Background()
	bucket := "job_" + rkeys.IDBucketChars(rkeys.SessionBucket("t", "s"))
	old, fresh := bucket+"old", bucket+"fresh"
	listing := rkeys.Listing(rkeys.Bucket(old), "t")
	for _, j := range []NewJob{
		{ID: old, Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now().Add(-2 * time.Minute)},
		{ID: fresh, Tenant: "t", SessionID: "s2", Queue: "q", CreatedAt: time.Now()},
	} {
		if _, _, err := s.Create(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.ZScore(ctx, listing, old).Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("an entry older than the retention stays in the listing: %v", err)
	}
	if err := c.ZScore(ctx, listing, fresh).Err(); err != nil {
		t.Fatalf("the new entry: %v", err)
	}
	if _, err := s.Finish(ctx, fresh, "t", "s2", 0, Outcome{Status: StatusCanceled}); err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx, fresh, "t"); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Exists(ctx, listing, rkeys.Job(fresh), rkeys.Events(fresh)).Result(); err != nil || n != 0 {
		t.Fatalf("a purged job leaves %d of its listing, record and log: %v", n, err)
	}
}

// An unfinished job's record and session order outlive a short retention
// (the reconciler's visits extend them); its end gives the record the
// retention. The release that hands the turn to a job whose record is gone
// writes nothing there: no record without a TTL.
func TestUnfinishedRecordsOutliveTheRetention(t *testing.T) {
	c := testkit.StartRedis(t).Client()
	s := New(c, Options{Retention: time.Second, HistoryMaxMessages: 4, HistoryTTL: time.Hour})
	ctx := context.Background()
	bucket := "job_" + rkeys.IDBucketChars(rkeys.SessionBucket("t", "s"))
	head, gone := bucket+"head", bucket+"gone"
	for _, id := range []string{head, gone} {
		if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{rkeys.Job(head), rkeys.SessionOrder("t", "s"), rkeys.Unfinished(rkeys.Bucket(head))} {
		if ttl := c.TTL(ctx, k).Val(); ttl < WaitingCheck {
			t.Fatalf("%s of an unfinished job is kept %v, less than the reconciler's longest gap", k, ttl)
		}
	}
	c.Del(ctx, rkeys.Job(gone)) // as if it had expired
	f, err := s.Finish(ctx, head, "t", "s", 0, Outcome{Status: StatusSucceeded, Result: &Result{Content: "a"}})
	if err != nil || f.Next == nil || f.Next.ID != gone || !f.Next.Gone {
		t.Fatalf("finish: %+v %v", f, err)
	}
	if ttl := c.TTL(ctx, rkeys.Job(head)).Val(); ttl <= 0 || ttl > time.Second {
		t.Fatalf("a finished record is kept %v, not the retention", ttl)
	}
	if n := c.Exists(ctx, rkeys.Job(gone)).Val(); n != 0 {
		t.Fatalf("the release made a record for a job whose record is gone: %v", c.HGetAll(ctx, rkeys.Job(gone)).Val())
	}
}
