package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// hook is one request a receiver got.
type hook struct {
	header http.Header
	body   []byte
	at     time.Time
	status int
}

// receiver is a webhook receiver on 127.0.0.1 that answers each request with
// the next of its statuses (the last one repeated) and keeps what it got.
type receiver struct {
	mu       sync.Mutex
	hooks    []hook
	statuses []int
	srv      *http.Server
	url      string
}

// startReceiver listens on addr ("127.0.0.1:0" for any port).
func startReceiver(t *testing.T, addr string, statuses ...int) *receiver {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{statuses: statuses, url: "http://" + ln.Addr().String() + "/hooks"}
	r.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		r.mu.Lock()
		status := r.statuses[min(len(r.hooks), len(r.statuses)-1)]
		r.hooks = append(r.hooks, hook{header: req.Header.Clone(), body: body, at: time.Now(), status: status})
		r.mu.Unlock()
		w.WriteHeader(status)
	})}
	go func() { _ = r.srv.Serve(ln) }()
	t.Cleanup(func() { _ = r.srv.Close() })
	return r
}

func (r *receiver) got() []hook {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hook(nil), r.hooks...)
}

// waitFor waits until cond holds of what the receiver got.
func (r *receiver) waitFor(t *testing.T, within time.Duration, what string, cond func([]hook) bool) []hook {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if h := r.got(); cond(h) {
			return h
		} else if time.Now().After(deadline) {
			t.Fatalf("after %s the receiver has %d requests, waiting for %s", within, len(h), what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newSecret is a Standard Webhooks secret as OpenAI issues them.
func newSecret(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// webhooksFile writes CHATFLEET_WEBHOOKS_FILE's content.
func webhooksFile(t *testing.T, entries ...map[string]any) string {
	t.Helper()
	b, err := json.Marshal(entries)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "webhooks.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A background response with a tenant endpoint: one response.completed that
// openai-go's webhooks package verifies with the secret; the same package
// refuses it with one byte changed, or once its timestamp is old.
func TestResponsesWebhookVerifiesWithTheOpenAISDK(t *testing.T) {
	rd := testkit.StartRedis(t)
	rcv := startReceiver(t, "127.0.0.1:0", http.StatusOK)
	secret := newSecret(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{
		"CHATFLEET_WEBHOOKS_FILE":         webhooksFile(t, map[string]any{"tenant": "default", "url": rcv.url, "secret": secret}),
		"CHATFLEET_WEBHOOK_ALLOW_PRIVATE": "true",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	r, err := oa.Responses.New(ctx, responses.ResponseNewParams{Model: "sim", Input: input("call me back"), Background: openai.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	hooks := rcv.waitFor(t, 20*time.Second, "one webhook", func(h []hook) bool { return len(h) >= 1 })
	time.Sleep(time.Second) // nothing more comes
	if hooks = rcv.got(); len(hooks) != 1 {
		t.Fatalf("the receiver got %d webhooks for one response, want 1", len(hooks))
	}
	h := hooks[0]
	verifier := openai.NewClient(option.WithWebhookSecret(secret), option.WithAPIKey("unused"))
	ev, err := verifier.Webhooks.Unwrap(h.body, h.header)
	if err != nil {
		t.Fatalf("openai-go refused the webhook: %v\nheaders %v\nbody %s", err, h.header, h.body)
	}
	done := ev.AsResponseCompleted()
	if ev.Type != "response.completed" || done.Data.ID != r.ID || !strings.HasPrefix(done.ID, "evt_") || h.header.Get("webhook-id") != done.ID {
		t.Fatalf("event %s for %s (id %s, webhook-id %s), want response.completed for %s", ev.Type, done.Data.ID, done.ID, h.header.Get("webhook-id"), r.ID)
	}
	tampered := append([]byte(nil), h.body...)
	tampered[len(tampered)-3] ^= 1
	if _, err := verifier.Webhooks.Unwrap(tampered, h.header); err == nil {
		t.Fatal("openai-go accepted a tampered body")
	}
	if err := verifier.Webhooks.VerifySignatureWithToleranceAndTime(h.body, h.header, 5*time.Minute, time.Now().Add(10*time.Minute)); err == nil {
		t.Fatal("openai-go accepted a webhook whose timestamp is ten minutes old")
	}
	t.Logf("verified %s %s (%d bytes)", ev.Type, done.ID, len(h.body))
}

// A jobs-API submit with webhook_url whose receiver is down (connection
// refused) for the first attempts, then answers 500, then 200: exactly one
// delivery accepted, every attempt under the same webhook-id, the delays
// between attempts growing.
func TestJobWebhookIsRetriedUntilAccepted(t *testing.T) {
	rd := testkit.StartRedis(t)
	port := testkit.FreePort(t) // nothing listens there yet: connection refused
	addr := "127.0.0.1:" + strconv.Itoa(port)
	secret := newSecret(t)
	const base = time.Second
	apis, _ := fleet(t, rd, 1, 1, map[string]string{
		"CHATFLEET_WEBHOOKS_FILE":         webhooksFile(t, map[string]any{"tenant": "default", "secret": secret}),
		"CHATFLEET_WEBHOOK_ALLOW_PRIVATE": "true",
		"CHATFLEET_WEBHOOK_RETRY_BASE":    base.String(),
	})
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "hooked", Message: "tell me when done", WebhookURL: "http://" + addr + "/hooks"})
	if err != nil {
		t.Fatal(err)
	}
	// Follow the delivery on the job's record: each attempt's end.
	var ends []time.Time
	var rcv *receiver
	last := 0
	for {
		j, err := c.Get(ctx, sub.JobID)
		if err != nil {
			t.Fatal(err)
		}
		if len(j.Webhooks) == 1 {
			d := j.Webhooks[0]
			if d.Attempts > last {
				if d.Attempts != last+1 {
					t.Fatalf("attempt %d seen after %d: the poll missed one", d.Attempts, last)
				}
				last = d.Attempts
				ends = append(ends, d.At) // the worker's clock, as it recorded the attempt
				t.Logf("attempt %d at %s (seen %s): %s %d %s", d.Attempts, d.At.Format("15:04:05.000"), time.Now().Format("15:04:05.000"), d.State, d.StatusCode, d.Error)
				if d.Attempts <= 3 && (d.State != "retrying" || !strings.Contains(d.Error, "connect")) {
					t.Fatalf("attempt %d with the receiver down: %+v", d.Attempts, d)
				}
			}
			if d.Attempts == 3 && rcv == nil {
				rcv = startReceiver(t, addr, http.StatusInternalServerError, http.StatusOK)
			}
			if d.State == "delivered" {
				if d.Attempts != 5 || d.StatusCode != 200 {
					t.Fatalf("delivered: %+v, want the fifth attempt answered 200", d)
				}
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatal("the webhook was never delivered")
		}
		time.Sleep(15 * time.Millisecond)
	}
	time.Sleep(2 * base) // nothing more comes
	hooks := rcv.got()
	if len(hooks) != 2 || hooks[0].status != 500 || hooks[1].status != 200 {
		t.Fatalf("the receiver got %d requests, want a 500 then a 200", len(hooks))
	}
	j, _ := c.Get(ctx, sub.JobID)
	for _, h := range hooks {
		if id := h.header.Get("webhook-id"); id != j.Webhooks[0].EventID || !strings.HasPrefix(id, "evt_") {
			t.Fatalf("webhook-id %q, the delivery's event is %q", id, j.Webhooks[0].EventID)
		}
	}
	var ev struct {
		Type string `json:"type"`
		Data struct {
			ID, SessionID, Status string
		} `json:"data"`
	}
	if err := json.Unmarshal(hooks[1].body, &ev); err != nil || ev.Type != "job.succeeded" || ev.Data.ID != sub.JobID || ev.Data.Status != "succeeded" {
		t.Fatalf("event %s: %+v %v", hooks[1].body, ev, err)
	}
	var delays []time.Duration
	for i := 1; i < len(ends); i++ {
		delays = append(delays, ends[i].Sub(ends[i-1]))
	}
	t.Logf("delays between attempts: %v", delays)
	// base, 2 base, 4 base, 8 base, each ±20 % and up to a second early
	// (asynq schedules retries to the second).
	if len(delays) != 4 || delays[3] < 3*delays[0] || delays[3] < 2*delays[1] || delays[2] < delays[0] {
		t.Fatalf("delays %v do not grow from %s", delays, base)
	}
}

// 30 jobs with webhooks over 2 workers while one worker is SIGKILLed mid-run
// and Redis (with AOF) is restarted: every job's webhook is accepted, none is
// missing, and a job delivered twice was delivered under one webhook-id.
func TestWebhooksSurviveWorkerKillAndRedisRestart(t *testing.T) {
	rd := testkit.StartRedis(t, testkit.WithAOF())
	rcv := startReceiver(t, "127.0.0.1:0", http.StatusOK)
	apis, workers := fleet(t, rd, 1, 2, map[string]string{
		"CHATFLEET_SIM_TOKENS": "12", "CHATFLEET_SIM_TOKEN_DELAY": "60ms",
		"CHATFLEET_WEBHOOKS_FILE":         webhooksFile(t, map[string]any{"tenant": "default", "url": rcv.url, "secret": newSecret(t)}),
		"CHATFLEET_WEBHOOK_ALLOW_PRIVATE": "true",
		"CHATFLEET_WEBHOOK_RETRY_BASE":    "500ms",
	})
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const jobs = 30
	want := map[string]bool{}
	for i := range jobs {
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("hook-%d", i%15), Message: fmt.Sprintf("job %d", i)})
		if err != nil {
			t.Fatal(err)
		}
		want[sub.JobID] = true
	}
	time.Sleep(300 * time.Millisecond) // both workers are mid-run
	workers[0].Signal(syscall.SIGKILL)
	if _, ok := workers[0].Wait(5 * time.Second); !ok {
		t.Fatal("the killed worker did not exit")
	}
	rd.Restart()
	for id := range want {
		if j, err := c.Wait(ctx, id); err != nil || j.Status != "succeeded" {
			t.Fatalf("job %s: %+v %v", id, j, err)
		}
	}
	byJob := map[string]map[string]bool{} // job -> webhook-ids
	rcv.waitFor(t, 45*time.Second, fmt.Sprintf("webhooks of all %d jobs", jobs), func(hs []hook) bool {
		byJob = map[string]map[string]bool{}
		for _, h := range hs {
			var ev struct {
				Type string `json:"type"`
				Data struct {
					ID string `json:"id"`
				} `json:"data"`
			}
			if json.Unmarshal(h.body, &ev) != nil || ev.Type != "job.succeeded" || !want[ev.Data.ID] {
				t.Fatalf("unexpected webhook %s", h.body)
			}
			if byJob[ev.Data.ID] == nil {
				byJob[ev.Data.ID] = map[string]bool{}
			}
			byJob[ev.Data.ID][h.header.Get("webhook-id")] = true
		}
		return len(byJob) == jobs
	})
	hooks := rcv.got()
	for id, ids := range byJob {
		if len(ids) != 1 {
			t.Errorf("job %s was delivered under %d webhook-ids", id, len(ids))
		}
	}
	t.Logf("%d jobs, %d deliveries accepted (%d duplicates, each under its job's one webhook-id)", jobs, len(hooks), len(hooks)-jobs)
}

// A webhook to 127.0.0.1 without CHATFLEET_WEBHOOK_ALLOW_PRIVATE is refused:
// recorded on the job and counted, never sent, and archived, where operators
// see it and re-deliver it. A tenant without a secret cannot ask for one.
func TestWebhookToLoopbackIsRefused(t *testing.T) {
	rd := testkit.StartRedis(t)
	rcv := startReceiver(t, "127.0.0.1:0", http.StatusOK)
	const adminKey = "admin-key-0123456789"
	apis, workers := fleet(t, rd, 1, 1, map[string]string{
		"CHATFLEET_API_KEYS":      keysEnv(),
		"CHATFLEET_ADMIN_KEY":     adminKey,
		"CHATFLEET_WEBHOOKS_FILE": webhooksFile(t, map[string]any{"tenant": "acme", "secret": newSecret(t)}),
	})
	c := client.New(apis[0].URL(), client.WithAPIKey(keyAcme))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "private", Message: "call my loopback", WebhookURL: rcv.url})
	if err != nil {
		t.Fatal(err)
	}
	refused := func() client.WebhookDelivery {
		for {
			j, err := c.Get(ctx, sub.JobID)
			if err != nil || ctx.Err() != nil {
				t.Fatalf("the delivery was never refused: %+v %v", j.Webhooks, err)
			}
			if len(j.Webhooks) == 1 && j.Webhooks[0].State == "refused" {
				return j.Webhooks[0]
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	d := refused()
	if !strings.Contains(d.Error, "127.0.0.1") || d.Attempts != 1 {
		t.Fatalf("refused delivery: %+v", d)
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(rcv.got()); n != 0 {
		t.Fatalf("the receiver on 127.0.0.1 got %d requests", n)
	}
	if v, _ := labelled(t, workers[0].URL(), `chatfleet_webhook_deliveries_total{outcome="refused"}`); v != 1 {
		t.Fatalf("refused deliveries counted %v, want 1", v)
	}
	// Queue status shows the archived delivery apart from the chat backlog,
	// and counts the worker once (its webhook server is not a worker).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r := do(t, "GET", apis[0].URL()+"/health/queue/status", nil, nil)
		wh, _ := r.Body["webhooks"].(map[string]any)
		ws, _ := r.Body["workers"].(map[string]any)
		if wh != nil && wh["archived"] == float64(1) && ws["live"] == float64(1) && r.Body["backlog"] == float64(0) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("queue status: %s", r.Raw)
		}
	}
	admin := map[string]string{"Authorization": "Bearer " + adminKey}
	r := do(t, "GET", apis[0].URL()+"/admin/api/webhooks/archived", nil, admin)
	list, _ := r.Body["deliveries"].([]any)
	if r.Status != http.StatusOK || len(list) != 1 {
		t.Fatalf("archived webhooks: %d %s", r.Status, r.Raw)
	}
	a := list[0].(map[string]any)
	if a["job_id"] != sub.JobID || a["event_id"] != d.EventID || a["type"] != "job.succeeded" || !strings.Contains(a["last_error"].(string), "refused") {
		t.Fatalf("archived delivery %v", a)
	}
	if r := do(t, "POST", apis[0].URL()+"/admin/api/webhooks/nope/redeliver", nil, admin); r.Status != http.StatusNotFound {
		t.Fatalf("re-deliver an unknown delivery: %d %s", r.Status, r.Raw)
	}
	if r := do(t, "POST", apis[0].URL()+"/admin/api/webhooks/"+a["id"].(string)+"/redeliver", nil, admin); r.Status != http.StatusOK {
		t.Fatalf("re-deliver: %d %s", r.Status, r.Raw)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if v, _ := labelled(t, workers[0].URL(), `chatfleet_webhook_deliveries_total{outcome="refused"}`); v == 2 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the re-delivery was not attempted: refused counted %v", v)
		}
	}
	if n := len(rcv.got()); n != 0 {
		t.Fatalf("the re-delivery reached 127.0.0.1 (%d requests)", n)
	}
	// A URL that is not http(s) is a 422 naming the field, and so is any URL
	// of a tenant with no secret to sign with; nothing is written.
	for key, url := range map[string]string{keyAcme: "ftp://example.com/x", keyBeta: "https://example.com/x"} {
		r := do(t, "POST", apis[0].URL()+"/api/v1/chat/jobs", map[string]any{"session_id": "private-2", "message": "x", "webhook_url": url},
			map[string]string{"Authorization": "Bearer " + key})
		if r.Status != http.StatusUnprocessableEntity || !strings.Contains(r.Raw, "webhook_url") {
			t.Fatalf("webhook_url %s: %d %s", url, r.Status, r.Raw)
		}
	}
	// Nothing of either refused submit is there: no job in either tenant's
	// list, no message in either tenant's session.
	for _, key := range []string{keyAcme, keyBeta} {
		auth := map[string]string{"Authorization": "Bearer " + key}
		if r := do(t, "GET", apis[0].URL()+"/api/v1/chat/jobs?session_id=private-2", nil, auth); r.Status != http.StatusOK || len(r.Body["data"].([]any)) != 0 {
			t.Fatalf("a refused submit left a job: %d %s", r.Status, r.Raw)
		}
		if r := do(t, "GET", apis[0].URL()+"/api/v1/sessions/private-2/messages", nil, auth); r.Status != http.StatusOK || strings.Contains(r.Raw, `"x"`) {
			t.Fatalf("a refused submit left a message: %d %s", r.Status, r.Raw)
		}
	}
	t.Logf("refused: %s", d.Error)
}
