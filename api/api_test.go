package api

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/httpserve"
	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
	"github.com/chatfleet/chatfleet/webhooks"
)

const (
	keyA = "acme-key-0123456789"
	keyB = "beta-key-0123456789"
)

// newAPI serves the API in-process against a private Redis (no worker runs).
func newAPI(t *testing.T, plain map[string]string) (*echo.Echo, *redis.Client) {
	keys := map[[32]byte]string{}
	for k, tenant := range plain {
		keys[sha256.Sum256([]byte(k))] = tenant
	}
	return newAPIWith(t, Options{APIKeys: keys})
}

// newAPIWith is newAPI with the given options.
func newAPIWith(t *testing.T, opt Options) (*echo.Echo, *redis.Client) {
	c := testkit.StartRedis(t).Client()
	return newAPIOn(t, c, opt), c
}

// newAPIOn serves an API process on c: several on one Redis stand for a
// fleet, or for one process restarted with other settings.
func newAPIOn(t *testing.T, c *redis.Client, opt Options) *echo.Echo {
	return newAPIStore(t, c, opt, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
}

// newAPIStore is newAPIOn with the given store options (a job cap).
func newAPIStore(t *testing.T, c *redis.Client, opt Options, so store.Options) *echo.Echo {
	st := store.New(c, so)
	e := httpserve.NewEcho(zerolog.New(io.Discard), nil)
	hub := stream.NewHub(c, zerolog.New(io.Discard))
	t.Cleanup(func() { _ = hub.Close() })
	mgr := jobs.New(st, asynq.NewClientFromRedisClient(c), asynq.NewInspectorFromRedisClient(c), jobs.Options{MaxRetries: 3})
	New(Deps{Jobs: mgr, Store: st.Reader(), Hub: hub, Redis: c}, opt).Register(e)
	return e
}

func call(e *echo.Echo, method, path, contentType, body string, header map[string]string) (*httptest.ResponseRecorder, map[string]any) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	var m map[string]any
	_ = json.Unmarshal(rec.Body.Bytes(), &m)
	return rec, m
}

func TestSubmitRejectsBadInputNamingTheField(t *testing.T) {
	e, rdb := newAPI(t, nil)
	long := strings.Repeat("x", maxMessageBytes+1)
	deep := `{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}`
	cases := []struct {
		name, ctype, body string
		header            map[string]string
		status            int
		field             string
	}{
		{"no content type", "", `{"session_id":"s","message":"m"}`, nil, 415, "Content-Type"},
		{"text body", "text/plain", `hello`, nil, 415, "Content-Type"},
		{"latin-1 charset", "application/json; charset=latin1", `{}`, nil, 415, "Content-Type"},
		{"empty body", "application/json", ``, nil, 400, "body"},
		{"broken json", "application/json", `{"session_id":`, nil, 400, "body"},
		{"syntax error", "application/json", `{"session_id" "s"}`, nil, 400, "body"},
		{"array body", "application/json", `[1,2]`, nil, 400, "body"},
		{"trailing data", "application/json", `{"session_id":"s","message":"m"} {}`, nil, 400, "body"},
		{"wrong type", "application/json", `{"session_id":"s","message":5}`, nil, 400, "message"},
		{"unknown field", "application/json", `{"session_id":"s","mesage":"m"}`, nil, 400, "mesage"},
		{"invalid utf-8", "application/json", "{\"session_id\":\"s\",\"message\":\"\xff\xfe\"}", nil, 400, "body"},
		{"too large", "application/json", `{"session_id":"s","message":"` + strings.Repeat("x", maxBodyBytes) + `"}`, nil, 413, "body"},
		{"missing session", "application/json", `{"message":"m"}`, nil, 422, "session_id"},
		{"bad session chars", "application/json", `{"session_id":"a/b","message":"m"}`, nil, 422, "session_id"},
		{"long session", "application/json", `{"session_id":"` + strings.Repeat("s", 129) + `","message":"m"}`, nil, 422, "session_id"},
		{"blank message", "application/json", `{"session_id":"s","message":"  \n"}`, nil, 422, "message"},
		{"long message", "application/json", `{"session_id":"s","message":"` + long + `"}`, nil, 422, "message"},
		{"bad priority", "application/json", `{"session_id":"s","message":"m","priority":"urgent"}`, nil, 422, "priority"},
		{"model with spaces", "application/json", `{"session_id":"s","message":"m","model":"gpt 4"}`, nil, 422, "model"},
		{"metadata not object", "application/json", `{"session_id":"s","message":"m","metadata":[1]}`, nil, 400, "metadata"},
		{"metadata too deep", "application/json", `{"session_id":"s","message":"m","metadata":` + deep + `}`, nil, 422, "metadata"},
		{"bad idempotency key", "application/json", `{"session_id":"s","message":"m"}`, map[string]string{"Idempotency-Key": "has space"}, 400, "Idempotency-Key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, body := call(e, http.MethodPost, "/api/v1/chat/jobs", c.ctype, c.body, c.header)
			errObj, _ := body["error"].(map[string]any)
			if rec.Code != c.status || errObj == nil || errObj["field"] != c.field || errObj["message"] == "" {
				t.Fatalf("got %d %s, want %d naming %q", rec.Code, rec.Body.String(), c.status, c.field)
			}
		})
	}
	if n := rdb.DBSize(context.Background()).Val(); n != 0 {
		t.Fatalf("bad requests wrote %d keys", n)
	}
}

func TestSubmitAndReadBack(t *testing.T) {
	e, rdb := newAPI(t, nil)
	rec, body := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json",
		`{"session_id":"sess_1","message":"hi","priority":"high","metadata":{"b":1,"a":[true]}}`, nil)
	if rec.Code != http.StatusAccepted || body["status"] != "queued" || body["session_id"] != "sess_1" {
		t.Fatalf("%d %s", rec.Code, rec.Body.String())
	}
	id := body["job_id"].(string)
	if body["status_url"] != "/api/v1/chat/jobs/"+id || body["stream_url"] != "/api/v1/chat/jobs/"+id+"/stream" {
		t.Fatalf("urls: %v", body)
	}
	// priority high waits in the scheduler's high lane until a worker has
	// a slot; the record keeps the payload its task will carry.
	place, err := rdb.HGet(context.Background(), rkeys.SchedJobs(), id).Result()
	if err != nil || !strings.Contains(place, `"lane":"high"`) {
		t.Fatalf("the job's place in the scheduler: %q %v", place, err)
	}
	raw, err := rdb.HGet(context.Background(), rkeys.Job(id), "payload").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var p tasks.ChatPayload
	if p, err = tasks.DecodeChat(raw); err != nil || string(p.Metadata) != `{"b":1,"a":[true]}` || p.Message != "hi" || p.Priority != "high" {
		t.Fatalf("payload %+v %v", p, err)
	}
	// unfinished: kept at least the retention, extended until it ends
	if ttl := rdb.TTL(context.Background(), rkeys.Job(id)).Val(); ttl < time.Hour-time.Minute {
		t.Fatalf("record TTL %s, want at least the retention", ttl)
	}
	rec, body = call(e, http.MethodGet, "/api/v1/chat/jobs/"+id, "", "", nil)
	if rec.Code != http.StatusOK || body["status"] != "queued" || body["attempts"] != float64(0) || body["created_at"] == nil {
		t.Fatalf("%d %s", rec.Code, rec.Body.String())
	}
	// No worker runs: a bounded wait returns the job still queued.
	start := time.Now()
	rec, body = call(e, http.MethodGet, "/api/v1/chat/jobs/"+id+"?wait=300ms", "", "", nil)
	if rec.Code != http.StatusOK || body["status"] != "queued" || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("wait: %d %s after %s", rec.Code, rec.Body.String(), time.Since(start))
	}
	for _, bad := range []string{"?wait=soon", "?wait=-1s"} {
		if rec, _ := call(e, http.MethodGet, "/api/v1/chat/jobs/"+id+bad, "", "", nil); rec.Code != http.StatusBadRequest {
			t.Fatalf("%s: %d", bad, rec.Code)
		}
	}
	for _, path := range []string{"/api/v1/chat/jobs/job_00000000000000000000000000", "/api/v1/chat/jobs/..%2F..", "/api/v1/chat/jobs/x"} {
		if rec, _ := call(e, http.MethodGet, path, "", "", nil); rec.Code != http.StatusNotFound {
			t.Fatalf("%s: %d %s", path, rec.Code, rec.Body.String())
		}
	}
}

func TestIdempotencyKeyReplaysAndConflicts(t *testing.T) {
	e, _ := newAPI(t, nil)
	h := map[string]string{"Idempotency-Key": "k-1"}
	first, b1 := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m","metadata":{"a":1,"b":2}}`, h)
	// Same content, other key order and spacing: still the same request.
	again, b2 := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{ "metadata":{"b":2,"a":1}, "message":"m","session_id":"s"}`, h)
	if first.Code != 202 || again.Code != 200 || again.Header().Get("Idempotent-Replayed") != "true" || b1["job_id"] != b2["job_id"] {
		t.Fatalf("first %d %v, again %d %v", first.Code, b1, again.Code, b2)
	}
	conflict, b3 := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"other"}`, h)
	if conflict.Code != http.StatusConflict || b3["error"].(map[string]any)["field"] != "Idempotency-Key" {
		t.Fatalf("conflict: %d %v", conflict.Code, b3)
	}
}

func TestTenantsSeeOnlyTheirOwnJobs(t *testing.T) {
	e, _ := newAPI(t, map[string]string{keyA: "acme", keyB: "beta"})
	asA := map[string]string{"Authorization": "Bearer " + keyA}
	asB := map[string]string{"Authorization": "Bearer " + keyB}
	if rec, _ := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, nil); rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") == "" {
		t.Fatalf("no key: %d", rec.Code)
	}
	if rec, _ := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, map[string]string{"Authorization": "Bearer wrong-key-0123456789"}); rec.Code != http.StatusUnauthorized {
		t.Fatalf("wrong key: %d", rec.Code)
	}
	rec, body := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, asA)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("submit as A: %d %s", rec.Code, rec.Body.String())
	}
	id := body["job_id"].(string)
	if rec, _ := call(e, http.MethodGet, "/api/v1/chat/jobs/"+id, "", "", asB); rec.Code != http.StatusNotFound {
		t.Fatalf("B reads A's job: %d", rec.Code)
	}
	if rec, _ := call(e, http.MethodGet, "/api/v1/chat/jobs/"+id, "", "", asA); rec.Code != http.StatusOK {
		t.Fatalf("A reads its job: %d", rec.Code)
	}
	// The same Idempotency-Key under two tenants makes two separate jobs.
	k := map[string]string{"Idempotency-Key": "shared"}
	for kk, v := range asA {
		k[kk] = v
	}
	_, ba := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, k)
	k["Authorization"] = asB["Authorization"]
	rb, bb := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, k)
	if rb.Code != http.StatusAccepted || ba["job_id"] == bb["job_id"] {
		t.Fatalf("B's key collided with A's: %d %v %v", rb.Code, ba, bb)
	}
}

func TestUnknownRoutesAnswerJSON(t *testing.T) {
	e, _ := newAPI(t, nil)
	rec, body := call(e, http.MethodGet, "/nope", "", "", nil)
	if rec.Code != http.StatusNotFound || body["error"] == nil {
		t.Fatalf("%d %s", rec.Code, rec.Body.String())
	}
	rec, _ = call(e, http.MethodDelete, "/api/v1/chat/jobs", "", "", nil)
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("%d", rec.Code)
	}
}

// Streams and long polls outlive the server's read timeout, which exists to
// stop slow clients from trickling in requests.
func TestLongRequestsOutliveTheReadTimeout(t *testing.T) {
	e, _ := newAPI(t, nil)
	srv, err := httpserve.Start("127.0.0.1:0", e, zerolog.New(io.Discard), httpserve.WithReadTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	base := "http://" + srv.Addr()
	res, err := http.Post(base+"/api/v1/chat/jobs", "application/json", strings.NewReader(`{"session_id":"s","message":"m"}`))
	if err != nil {
		t.Fatal(err)
	}
	var sub struct {
		JobID string `json:"job_id"`
	}
	_ = json.NewDecoder(res.Body).Decode(&sub)
	res.Body.Close()

	start := time.Now()
	res, err = http.Get(base + "/api/v1/chat/jobs/" + sub.JobID + "?wait=1s")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if took := time.Since(start); res.StatusCode != http.StatusOK || took < time.Second {
		t.Fatalf("long poll answered %d after %s, want 200 after the full second", res.StatusCode, took)
	}

	res, err = http.Get(base + "/api/v1/chat/jobs/" + sub.JobID + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got := make(chan error, 1)
	go func() { _, err := io.ReadAll(res.Body); got <- err }()
	select {
	case err := <-got:
		t.Fatalf("the stream ended after %s (%v), well inside the job's life", time.Since(start), err)
	case <-time.After(time.Second):
	}
}

// The /v1 doors apply OpenAI's limits to the fields they share and count a
// response's instructions in its input: each refusal is a 400 naming the
// field, and writes nothing.
func TestOpenAIFieldLimitsNameTheField(t *testing.T) {
	e, rdb := newAPI(t, nil)
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	long := func(n int) string { return strings.Repeat("x", n) }
	meta := func(k, v string) string { return fmt.Sprintf(`"metadata":{%q:%q}`, k, v) }
	many := `"metadata":{` + strings.TrimSuffix(strings.Repeat(`"k":"v",`, 1), ",")
	for i := range 17 {
		many += fmt.Sprintf(`,"k%d":"v"`, i)
	}
	many += "}"
	cases := []struct{ name, path, body, field string }{
		{"chat: long model", "/v1/chat/completions", `{"model":"` + long(129) + `",` + msgs + `}`, "model"},
		{"chat: model with a control character", "/v1/chat/completions", `{"model":"gpt\u0007",` + msgs + `}`, "model"},
		{"chat: long user", "/v1/chat/completions", `{"model":"m","user":"` + long(257) + `",` + msgs + `}`, "user"},
		{"chat: long metadata value", "/v1/chat/completions", `{"model":"m",` + meta("k", long(513)) + `,` + msgs + `}`, "metadata"},
		{"chat: long metadata key", "/v1/chat/completions", `{"model":"m",` + meta(long(65), "v") + `,` + msgs + `}`, "metadata"},
		{"chat: 18 metadata pairs", "/v1/chat/completions", `{"model":"m",` + many + `,` + msgs + `}`, "metadata"},
		{"responses: long metadata value", "/v1/responses", `{"model":"m","input":"hi",` + meta("k", long(513)) + `}`, "metadata"},
		{"responses: long user", "/v1/responses", `{"model":"m","input":"hi","user":"` + long(257) + `"}`, "user"},
		{"responses: long model", "/v1/responses", `{"model":"` + long(129) + `","input":"hi"}`, "model"},
		{"responses: long instructions", "/v1/responses", `{"model":"m","input":"hi","instructions":"` + long(maxInputText+1) + `"}`, "instructions"},
		{"responses: instructions and input together", "/v1/responses", `{"model":"m","input":"` + long(maxMessageBytes) + `","instructions":"` + long(maxInputText-maxMessageBytes+1) + `"}`, "input"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec, body := call(e, http.MethodPost, c.path, "application/json", c.body, nil)
			errObj, _ := body["error"].(map[string]any)
			if rec.Code != http.StatusBadRequest || errObj == nil || errObj["param"] != c.field {
				t.Fatalf("got %d %.300s, want 400 naming %q", rec.Code, rec.Body.String(), c.field)
			}
		})
	}
	if n := rdb.DBSize(context.Background()).Val(); n != 0 {
		t.Fatalf("refused requests wrote %d keys", n)
	}
}

// A webhook_url whose host carries an IPv6 zone names an interface of
// whichever worker sends: refused at submit, naming the field, even for a
// tenant that can sign, while a public URL is taken.
func TestSubmitRefusesAZonedWebhookURL(t *testing.T) {
	e, _ := newAPIWith(t, Options{Webhooks: webhooks.NewRegistry([]webhooks.Endpoint{{Tenant: DefaultTenant, Secret: "whsec_x"}})})
	submit := func(url string) (*httptest.ResponseRecorder, map[string]any) {
		return call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json",
			fmt.Sprintf(`{"session_id":"zones","message":"m","webhook_url":%q}`, url), nil)
	}
	if rec, _ := submit("https://[2606:4700::1111]/hooks"); rec.Code != http.StatusAccepted {
		t.Fatalf("a public IPv6 webhook_url: %d %s", rec.Code, rec.Body.String())
	}
	for _, url := range []string{"https://[fe80::1%25eth0]/", "https://[fe80::1%25eth0]:8443/hooks", "http://[fec0::1%25lo]/x", "https://[2606:4700::1111%25eth0]/"} {
		rec, body := submit(url)
		errObj, _ := body["error"].(map[string]any)
		if rec.Code != http.StatusUnprocessableEntity || errObj == nil || errObj["field"] != "webhook_url" {
			t.Errorf("webhook_url %s: got %d %s, want 422 naming webhook_url", url, rec.Code, rec.Body.String())
		}
	}
}

// A cursor is "<ms>.<job id>": one over a small length is refused, however it
// is made, and the list's own cursors are taken.
func TestListRefusesALongCursor(t *testing.T) {
	e, _ := newAPI(t, map[string]string{keyA: "acme"})
	asA := map[string]string{"Authorization": "Bearer " + keyA}
	for _, cur := range []string{"1700000000000.job_" + strings.Repeat("a", 100*1024), "1." + "job_" + strings.Repeat("b", maxCursor)} {
		rec, body := call(e, http.MethodGet, "/api/v1/chat/jobs?cursor="+cur, "", "", asA)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"cursor"`) {
			t.Fatalf("a %d-byte cursor: %d %v", len(cur), rec.Code, body)
		}
	}
	if rec, _ := call(e, http.MethodGet, "/api/v1/chat/jobs?cursor=1764806400000.job_aaaaaaaaaaaaaaaaaaaaaaaaaa", "", "", asA); rec.Code != http.StatusOK {
		t.Fatalf("a cursor of the list's shape: %d %s", rec.Code, rec.Body.String())
	}
}

// A usage query spans at most 366 days (the ledger is read month by month);
// beyond that it is refused naming from.
func TestUsageRangeIsCapped(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	if _, _, err := usageRange("2025-12-03", "2026-12-03", now); err != nil {
		t.Fatalf("366 days refused: %v", err)
	}
	_, _, err := usageRange("2025-12-02", "2026-12-03", now)
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Field != "from" {
		t.Fatalf("367 days: %v", err)
	}
	e, _ := newAPI(t, map[string]string{keyA: "acme"})
	rec, _ := call(e, http.MethodGet, "/api/v1/usage?from=2020-01-01&to=2026-12-01", "", "", map[string]string{"Authorization": "Bearer " + keyA})
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "366 days") {
		t.Fatalf("six years: %d %s", rec.Code, rec.Body.String())
	}
}
