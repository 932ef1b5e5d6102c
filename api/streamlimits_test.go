package api

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/store"
)

// A stream renewed at its heartbeats keeps counting against the cap past
// any number of leases: the set of stream leases does not expire under it.
func TestStreamCapCountsLongStreams(t *testing.T) {
	c := &streamCap{rdb: testkit.StartRedis(t).Client(), max: 1, lease: 200 * time.Millisecond}
	ctx := context.Background()
	// Five leases, renewed every quarter of one as heartbeats do. A run in
	// which the machine stalled a whole lease between two renewals proves
	// nothing (the stream's own lease ran out): it is run again, at most
	// three times.
	for try := 1; ; try++ {
		renew, release, err := c.acquire(ctx, "t")
		if err != nil {
			t.Fatal(err)
		}
		var stalled time.Duration
		last := time.Now()
		for range 20 {
			time.Sleep(c.lease / 4)
			renew()
			stalled, last = max(stalled, time.Since(last)), time.Now()
		}
		if stalled >= c.lease && try < 3 {
			release()
			continue
		}
		if _, _, err := c.acquire(ctx, "t"); !errors.Is(err, errTooManyStreams) {
			t.Fatalf("a second stream after five leases of the first (renewed at most %s apart): %v, want too_many_streams", stalled, err)
		}
		release()
		break
	}
	if _, rel, err := c.acquire(ctx, "t"); err != nil {
		t.Fatalf("after the first stream ended: %v", err)
	} else {
		rel()
	}
}

// Every held connection counts against the tenant's cap, not only SSE
// streams: a ?wait= long poll holds one, and while it does another long poll,
// a plain Chat Completions request and a plain Responses create (each held
// until its answer) are refused with 429 too_many_streams, writing nothing.
func TestHeldRequestsCountAgainstTheCap(t *testing.T) {
	e, rdb := newAPIWith(t, Options{TenantMaxStreams: 1})
	_, sub := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, nil)
	id, _ := sub["job_id"].(string)
	if id == "" {
		t.Fatalf("submit: %v", sub)
	}
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan int)
	go func() { // no worker runs: this poll waits until canceled
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/v1/chat/jobs/"+id+"?wait=30s", nil)
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		held <- rec.Code
	}()
	key := rkeys.TenantStreams(DefaultTenant)
	deadline := time.Now().Add(5 * time.Second)
	for rdb.ZCard(context.Background(), key).Val() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	keys := rdb.DBSize(context.Background()).Val()
	for name, r := range map[string]struct{ method, path, body string }{
		"long poll":        {http.MethodGet, "/api/v1/chat/jobs/" + id + "?wait=1s", ""},
		"chat completions": {http.MethodPost, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`},
		"responses create": {http.MethodPost, "/v1/responses", `{"model":"m","input":"hi"}`},
	} {
		// bounded: a request that is let through waits for a worker that never comes
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		req := httptest.NewRequestWithContext(rctx, r.method, r.path, strings.NewReader(r.body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		rcancel()
		if rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), "too_many_streams") || rec.Header().Get("Retry-After") == "" {
			t.Errorf("%s while a long poll is held: %d %s", name, rec.Code, rec.Body.String())
		}
	}
	if n := rdb.DBSize(context.Background()).Val(); n != keys {
		t.Errorf("refused requests wrote %d keys", n-keys)
	}
	cancel()
	<-held
	if n := rdb.ZCard(context.Background(), key).Val(); n != 0 {
		t.Errorf("the long poll's slot was not released: %d held", n)
	}
}

// A stream token lives ten minutes and is bound to the key that asked for
// it: after the tenant's key is rotated (the API restarted with a new one),
// the old key's token is refused.
func TestStreamTokensAreBoundToTheirKey(t *testing.T) {
	const oldKey, newKey = "acme-old-key-0123456789", "acme-new-key-0123456789"
	keys := func(k string) map[[32]byte]string { return map[[32]byte]string{sha256.Sum256([]byte(k)): "acme"} }
	before, rdb := newAPIWith(t, Options{APIKeys: keys(oldKey), StreamMaxDuration: 50 * time.Millisecond})
	auth := map[string]string{"Authorization": "Bearer " + oldKey}
	_, sub := call(before, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, auth)
	id, _ := sub["job_id"].(string)
	rec, tok := call(before, http.MethodPost, "/api/v1/chat/jobs/"+id+"/stream-token", "", "", auth)
	url, _ := tok["stream_url"].(string)
	if rec.Code != http.StatusOK || url == "" || tok["expires_in"] != float64(600) {
		t.Fatalf("stream token: %d %s", rec.Code, rec.Body.String())
	}
	if ttl := rdb.TTL(context.Background(), rkeys.StreamToken(strings.TrimPrefix(url[strings.Index(url, "token="):], "token="))).Val(); ttl > 10*time.Minute || ttl < 9*time.Minute {
		t.Fatalf("the token lives %s", ttl)
	}
	follow := func(e *echo.Echo) int {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		return rec.Code
	}
	if code := follow(before); code != http.StatusOK {
		t.Fatalf("the token with its key configured: %d", code)
	}
	after := newAPIOn(t, rdb, Options{APIKeys: keys(newKey), StreamMaxDuration: 50 * time.Millisecond})
	if code := follow(after); code != http.StatusUnauthorized {
		t.Fatalf("the old key's token after the key was rotated: %d, want 401", code)
	}
}

// A Responses create refused at the tenant's job cap leaves no response
// record behind (it was written before the cap was checked).
func TestResponsesRefusedAtTheJobCapWriteNothing(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	e := newAPIStore(t, rdb, Options{}, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour, TenantMaxJobs: 1})
	if rec, _ := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, nil); rec.Code != http.StatusAccepted {
		t.Fatalf("first job: %d %s", rec.Code, rec.Body.String())
	}
	keys := rdb.DBSize(context.Background()).Val()
	rec, _ := call(e, http.MethodPost, "/v1/responses", "application/json", `{"model":"m","input":"hi","background":true}`, nil)
	if rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), "too_many_jobs") {
		t.Fatalf("a response over the job cap: %d %s", rec.Code, rec.Body.String())
	}
	if n := rdb.DBSize(context.Background()).Val(); n != keys {
		left, _ := rdb.Keys(context.Background(), "chatfleet:response:*").Result()
		t.Fatalf("the refused response wrote %d keys: %v", n-keys, left)
	}
}
