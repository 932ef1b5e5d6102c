package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// get opens a raw GET with headers and returns the response (body open).
func get(t *testing.T, url string, header map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// What EventSource needs: 204 for a reconnect at or past a finished job's
// final event (header or ?last_event_id=), 400 past a running job's log, 404
// for an unknown job, and a retry hint when a stream opens.
func TestStreamAnswersForBrowsers(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_SIM_TOKENS": "30", "CHATFLEET_SIM_TOKEN_DELAY": "50ms"})
	base := apis[0].URL()
	c := client.New(base)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done, err := c.Submit(ctx, client.SubmitRequest{SessionID: "sse-done", Message: "hi"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx, done.JobID); err != nil {
		t.Fatal(err)
	}
	var final int64
	_ = c.Stream(ctx, done.JobID, client.StreamOptions{}, func(ev client.Event) error { final = ev.Seq; return nil })
	streamURL := base + "/api/v1/chat/jobs/" + done.JobID + "/stream"
	for _, tc := range []struct {
		name   string
		url    string
		header map[string]string
	}{
		{"at the final event", streamURL, map[string]string{"Last-Event-ID": fmt.Sprint(final)}},
		{"past the final event", streamURL, map[string]string{"Last-Event-ID": fmt.Sprint(final + 7)}},
		{"query parameter", streamURL + "?last_event_id=" + fmt.Sprint(final), nil},
	} {
		start := time.Now()
		res := get(t, tc.url, tc.header)
		res.Body.Close()
		if res.StatusCode != http.StatusNoContent || time.Since(start) > 2*time.Second {
			t.Errorf("%s: %d after %s, want 204 at once", tc.name, res.StatusCode, time.Since(start))
		}
	}
	// A replay from the start opens with a retry hint and ends with done.
	res := get(t, streamURL, nil)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "retry: ") || !strings.Contains(string(body), "event: done") {
		t.Errorf("replay: %d %.80q", res.StatusCode, body)
	}

	running, err := c.Submit(ctx, client.SubmitRequest{SessionID: "sse-running", Message: "long"})
	if err != nil {
		t.Fatal(err)
	}
	res = get(t, base+"/api/v1/chat/jobs/"+running.JobID+"/stream", map[string]string{"Last-Event-ID": "500"})
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "Last-Event-ID") {
		t.Errorf("past a running job's log: %d %s", res.StatusCode, b)
	}
	res = get(t, base+"/api/v1/chat/jobs/job_00000000000000000000000000/stream", nil)
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("unknown job: %d", res.StatusCode)
	}
}

// A tenant's concurrent streams are capped across API processes (streamed
// /v1 requests count too); a stream ends after CHATFLEET_STREAM_MAX_DURATION
// and the client resumes exactly; with keys on, a page follows a job with a
// stream token instead of a header.
func TestStreamBoundsAndTokens(t *testing.T) {
	rd := testkit.StartRedis(t)
	const key = "acme-key-0123456789"
	apis, _ := fleet(t, rd, 2, 1, map[string]string{
		"CHATFLEET_API_KEYS": "acme:" + key, "CHATFLEET_TENANT_MAX_STREAMS": "2", "CHATFLEET_STREAM_MAX_DURATION": "1s",
		"CHATFLEET_SIM_TOKENS": "60", "CHATFLEET_SIM_TOKEN_DELAY": "50ms",
	})
	auth := map[string]string{"Authorization": "Bearer " + key}
	c := client.New(apis[0].URL(), client.WithAPIKey(key))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "bounds", Message: "long one"})
	if err != nil {
		t.Fatal(err)
	}
	path := "/api/v1/chat/jobs/" + sub.JobID + "/stream"
	// Two streams, one on each API process, fill the cap.
	var open []*http.Response
	for _, a := range apis {
		res := get(t, a.URL()+path, auth)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("stream on %s: %d", a.Name, res.StatusCode)
		}
		open = append(open, res)
	}
	res := get(t, apis[1].URL()+path, auth)
	res.Body.Close()
	if res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" {
		t.Fatalf("a third stream: %d, Retry-After %q", res.StatusCode, res.Header.Get("Retry-After"))
	}
	v1 := do(t, http.MethodPost, apis[0].URL()+"/v1/chat/completions", map[string]any{
		"model": "sim", "stream": true, "messages": []map[string]string{{"role": "user", "content": "hi"}},
	}, auth)
	if v1.Status != http.StatusTooManyRequests {
		t.Fatalf("a streamed /v1 request over the cap: %d %s", v1.Status, v1.Raw)
	}
	// Each stream ends by itself after 1 s (max duration), freeing its slot.
	for _, r := range open {
		start := time.Now()
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("a stream lasted %s, its limit is 1s", took)
		}
	}
	// The Go client resumes across those cuts and gets every event once.
	var text strings.Builder
	var seqs []int64
	if err := c.Stream(ctx, sub.JobID, client.StreamOptions{}, func(ev client.Event) error {
		seqs = append(seqs, ev.Seq)
		if ev.Type == "token" {
			text.WriteString(ev.Delta)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	j, err := c.Get(ctx, sub.JobID)
	if err != nil || text.String() != j.Result.Content {
		t.Fatalf("resumed text %q, result %+v (%v)", text.String(), j.Result, err)
	}
	for i, s := range seqs {
		if s != int64(i+1) {
			t.Fatalf("events %v are not 1..n exactly once", seqs)
		}
	}

	// Stream tokens: a page's EventSource cannot send the key.
	if r := get(t, apis[1].URL()+path, nil); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no key, no token: %d", r.StatusCode)
	}
	tok := do(t, http.MethodPost, apis[0].URL()+path+"-token", nil, auth)
	streamURL, _ := tok.Body["stream_url"].(string)
	if tok.Status != http.StatusOK || streamURL == "" {
		t.Fatalf("stream token: %d %s", tok.Status, tok.Raw)
	}
	r := get(t, apis[1].URL()+streamURL, nil)
	sc := bufio.NewScanner(r.Body)
	sawDone := false
	for sc.Scan() {
		sawDone = sawDone || sc.Text() == "event: done"
	}
	r.Body.Close()
	if r.StatusCode != http.StatusOK || !sawDone {
		t.Fatalf("stream with a token on the other node: %d, done %v", r.StatusCode, sawDone)
	}
	other, err := c.Submit(ctx, client.SubmitRequest{SessionID: "bounds-2", Message: "x"})
	if err != nil {
		t.Fatal(err)
	}
	r = get(t, apis[0].URL()+"/api/v1/chat/jobs/"+other.JobID+"/stream?"+strings.SplitN(streamURL, "?", 2)[1], nil)
	r.Body.Close()
	if r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a token used for another job: %d", r.StatusCode)
	}
}

// The operators' queue UI and dead-letter endpoints answer only with the
// admin key.
func TestAdminRoutesNeedTheAdminKey(t *testing.T) {
	rd := testkit.StartRedis(t)
	const admin = "admin-key-0123456789"
	apis, _ := fleet(t, rd, 1, 0, map[string]string{"CHATFLEET_ADMIN_KEY": admin})
	base := apis[0].URL()
	if r := get(t, base+"/admin/queues/", nil); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("queue UI without the key: %d", r.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/admin/queues/", nil)
	req.SetBasicAuth("ops", admin)
	res, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(page), "<html") {
		t.Fatalf("queue UI with the key: %d %.100q", res.StatusCode, page)
	}
	if r := do(t, http.MethodGet, base+"/admin/api/archived", nil, map[string]string{"Authorization": "Bearer " + admin}); r.Status != http.StatusOK {
		t.Fatalf("archived list: %d %s", r.Status, r.Raw)
	}
	if r := do(t, http.MethodGet, base+"/admin/api/archived", nil, map[string]string{"Authorization": "Bearer wrong-key-0123456789"}); r.Status != http.StatusUnauthorized {
		t.Fatalf("archived list with a wrong key: %d", r.Status)
	}
	if r := get(t, base+"/", nil); r.Request.URL.Path != "/console/" {
		t.Fatalf("/ does not lead to the console: %s", r.Request.URL)
	}
	// The cached Basic credentials of the queue UI do not work for changes:
	// a cross-site form would send them.
	req, _ = http.NewRequest(http.MethodPost, base+"/admin/api/jobs/job_0000000000000000000000000/rerun", nil)
	req.SetBasicAuth("ops", admin)
	if res, err = httpc.Do(req); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a re-run with Basic credentials: %d, want 401", res.StatusCode)
	}
	// Every answer forbids framing and sniffing and sends no referrer; the
	// queue UI has a content security policy of its own.
	req, _ = http.NewRequest(http.MethodGet, base+"/admin/queues/", nil)
	req.SetBasicAuth("ops", admin)
	queueUI, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	queueUI.Body.Close()
	for _, r := range []*http.Response{queueUI, get(t, base+"/console/", nil), get(t, base+"/health", nil),
		get(t, base+"/api/v1/chat/jobs/job_0000000000000000000000000", nil), get(t, base+"/v1/models", nil)} {
		r.Body.Close()
		h := r.Header
		if h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "no-referrer" ||
			!strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("%s %d: X-Frame-Options %q, X-Content-Type-Options %q, Referrer-Policy %q, Content-Security-Policy %q", r.Request.URL.Path, r.StatusCode,
				h.Get("X-Frame-Options"), h.Get("X-Content-Type-Options"), h.Get("Referrer-Policy"), h.Get("Content-Security-Policy"))
		}
	}
	if csp := queueUI.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("queue UI CSP %q", csp)
	}
}
