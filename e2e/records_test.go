package e2e

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// With a retention shorter than a reply, the turns of a session that wait
// behind a running head keep their records (and the head its own) until they
// end: all three run and succeed. Once their records have expired, an
// Idempotency-Key sent again makes a new job (202), and no key of chatfleet's
// is left without a TTL.
func TestShortRetentionKeepsUnfinishedTurns(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_JOB_RETENTION": "3s", "CHATFLEET_SIM_LATENCY": "6s"})
	base := apis[0].URL()

	const session = "sess_short_retention"
	keys := []string{"turn-a", "turn-b", "turn-c"}
	ids := make([]string, len(keys))
	for i, k := range keys { // one after the other: the session's order is the submit order
		r := submit(t, base, session, "turn "+k, map[string]string{"Idempotency-Key": k})
		if r.Status != http.StatusAccepted {
			t.Fatalf("submit %s: %d %s", k, r.Status, r.Raw)
		}
		ids[i] = r.Body["job_id"].(string)
	}
	var wg sync.WaitGroup
	results := make([]response, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = waitJobOrGone(t, base, id) }()
	}
	wg.Wait()
	for i, r := range results {
		if r.Status != http.StatusOK || r.Body["status"] != "succeeded" || content(r) != "echo: turn "+keys[i] {
			t.Fatalf("turn %d (%s): %d %s", i, ids[i], r.Status, r.Raw)
		}
	}

	// The first turn's record expires with the retention; its key then makes a new job.
	deadline := time.Now().Add(30 * time.Second)
	for do(t, http.MethodGet, base+"/api/v1/chat/jobs/"+ids[0], nil, nil).Status != http.StatusNotFound {
		if time.Now().After(deadline) {
			t.Fatalf("job %s still there 30 s after it ended", ids[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := submit(t, base, session, "turn "+keys[0], map[string]string{"Idempotency-Key": keys[0]})
	if r.Status != http.StatusAccepted {
		t.Fatalf("the key sent again after its job expired: %d %s", r.Status, r.Raw)
	}
	if again := waitJobOrGone(t, base, r.Body["job_id"].(string)); again.Body["status"] != "succeeded" {
		t.Fatalf("the key's new job: %d %s", again.Status, again.Raw)
	}
	assertEveryKeyExpires(t, rd.Client())
}

// waitJobOrGone long-polls a job until it has finished, or answers anything
// but 200.
func waitJobOrGone(t *testing.T, base, id string) response {
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := do(t, http.MethodGet, base+"/api/v1/chat/jobs/"+id+"?wait=30s", nil, nil)
		if r.Status != http.StatusOK {
			return r
		}
		switch r.Body["status"] {
		case "succeeded", "failed", "canceled":
			return r
		}
		if time.Now().After(deadline) {
			return r
		}
	}
}

// assertEveryKeyExpires fails for every key outside asynq's that has no TTL.
// The shared breaker state is the one exception: it is the fleet's memory of
// a provider's health, written with the state it keeps, and rewritten on
// every change of it.
func assertEveryKeyExpires(t *testing.T, c *redis.Client) {
	t.Helper()
	ctx := context.Background()
	breakers := strings.TrimSuffix(rkeys.Breaker("x"), "x")
	iter := c.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		if strings.HasPrefix(k, "asynq:") || strings.HasPrefix(k, breakers) {
			continue
		}
		ttl, err := c.TTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl == -1 {
			typ, _ := c.Type(ctx, k).Result()
			t.Errorf("key %s (%s) has no TTL", k, typ)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
}
