package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// hookAdminKey is CHATFLEET_ADMIN_KEY of these tests' fleets.
const hookAdminKey = "hooks-admin-key-0123456789"

// scripted is a webhook receiver on 127.0.0.1 whose answer to each request
// is up to answer (n counts the requests from 0); it keeps every request,
// stamped when it arrived.
type scripted struct {
	srv    *httptest.Server
	mu     sync.Mutex
	hooks  []hook
	answer func(n int, w http.ResponseWriter, r *http.Request)
}

func startScripted(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *scripted {
	t.Helper()
	s := &scripted{answer: answer}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		s.mu.Lock()
		n := len(s.hooks)
		s.hooks = append(s.hooks, hook{header: r.Header.Clone(), body: body, at: time.Now()})
		s.mu.Unlock()
		s.answer(n, w, r)
	}))
	t.Cleanup(s.srv.Close) // registered before the fleet's: runs once the workers are gone
	return s
}

func (s *scripted) url() string { return s.srv.URL + "/hooks" }

func (s *scripted) got() []hook {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]hook(nil), s.hooks...)
}

// awaitHooks polls a job's record until its deliveries satisfy cond.
func awaitHooks(t *testing.T, c *client.Client, id string, within time.Duration, what string, cond func([]client.WebhookDelivery) bool) []client.WebhookDelivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var last []client.WebhookDelivery
	for {
		j, err := c.Get(ctx, id)
		if err == nil {
			last = j.Webhooks
			if cond(last) {
				return last
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("after %s job %s's deliveries are %+v (%v), waiting for %s", within, id, last, err, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hookAdmin calls an admin route with the admin key.
func hookAdmin(t *testing.T, base, method, path string) response {
	t.Helper()
	return do(t, method, base+path, nil, map[string]string{"Authorization": "Bearer " + hookAdminKey})
}

// archivedHooks is GET /admin/api/webhooks/archived's list.
func archivedHooks(t *testing.T, base string) []map[string]any {
	t.Helper()
	r := hookAdmin(t, base, http.MethodGet, "/admin/api/webhooks/archived")
	list, ok := r.Body["deliveries"].([]any)
	if r.Status != http.StatusOK || !ok {
		t.Fatalf("archived webhooks: %d %s", r.Status, r.Raw)
	}
	out := make([]map[string]any, 0, len(list))
	for _, a := range list {
		out = append(out, a.(map[string]any))
	}
	return out
}

// outcomes reads chatfleet_webhook_deliveries_total by outcome from a worker.
func outcomes(t *testing.T, worker string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, o := range []string{"delivered", "failed", "rate_limited", "refused", "expired"} {
		v, ok := labelled(t, worker, `chatfleet_webhook_deliveries_total{outcome="`+o+`"}`)
		if !ok {
			t.Fatalf("the worker exports no chatfleet_webhook_deliveries_total{outcome=%q}", o)
		}
		m[o] = v
	}
	return m
}

// hookFleet starts one API and one worker process whose tenant "default"
// sends its job events to urls, with the given delivery settings.
func hookFleet(t *testing.T, secret string, settings map[string]string, urls ...string) (api, worker string) {
	t.Helper()
	var eps []map[string]any
	for _, u := range urls {
		eps = append(eps, map[string]any{"tenant": "default", "url": u, "secret": secret})
	}
	env := map[string]string{
		"CHATFLEET_WEBHOOKS_FILE":         webhooksFile(t, eps...),
		"CHATFLEET_WEBHOOK_ALLOW_PRIVATE": "true",
		"CHATFLEET_ADMIN_KEY":             hookAdminKey,
	}
	for k, v := range settings {
		env[k] = v
	}
	apis, workers := fleet(t, testkit.StartRedis(t), 1, 1, env)
	return apis[0].URL(), workers[0].URL()
}

// submitHooked submits a job and waits for it to succeed.
func submitHooked(t *testing.T, c *client.Client, session string) client.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: session, Message: "tell me when done"})
	if err != nil {
		t.Fatal(err)
	}
	j, err := c.Wait(ctx, sub.JobID)
	if err != nil || j.Status != "succeeded" || j.FinishedAt == nil {
		t.Fatalf("job %s: %+v %v", sub.JobID, j, err)
	}
	return j
}

// sameWebhookID fails unless every request came under the event's id.
func sameWebhookID(t *testing.T, hooks []hook, eventID string) {
	t.Helper()
	for i, h := range hooks {
		if id := h.header.Get("webhook-id"); id != eventID || !strings.HasPrefix(id, "evt_") {
			t.Fatalf("request %d came with webhook-id %q, the delivery's event is %q", i+1, id, eventID)
		}
	}
}

// A receiver that always answers 500 is retried for CHATFLEET_WEBHOOK_RETRY_FOR
// after the event and no longer: the delivery ends gave_up on the job, is
// archived for operators, and its last attempt is counted expired (the ones
// before it failed).
func TestWebhookGivesUpAfterRetryFor(t *testing.T) {
	rcv := startScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	const retryFor = 3 * time.Second
	api, worker := hookFleet(t, newSecret(t), map[string]string{
		"CHATFLEET_WEBHOOK_RETRY_BASE": "500ms", "CHATFLEET_WEBHOOK_RETRY_FOR": retryFor.String(),
	}, rcv.url())
	c := client.New(api)
	j := submitHooked(t, c, "gives-up")
	ds := awaitHooks(t, c, j.JobID, 30*time.Second, "gave_up", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].State == "gave_up"
	})
	d := ds[0]
	if d.Attempts < 2 || d.StatusCode != http.StatusInternalServerError || !strings.Contains(d.Error, "500") || d.URL != rcv.url() || d.Event != "job.succeeded" {
		t.Fatalf("given up: %+v, want several attempts answered 500", d)
	}
	// It gave up on the first failure past the retry period, measured from
	// the event (the job's end), both on the worker's clock.
	if age := d.At.Sub(*j.FinishedAt); age < retryFor {
		t.Fatalf("gave up %s after the event, before the retry period of %s was over", age, retryFor)
	}
	time.Sleep(1500 * time.Millisecond) // more than the retry delay: an archived delivery is not retried
	hooks := rcv.got()
	if len(hooks) != d.Attempts {
		t.Fatalf("the receiver got %d requests, the record counts %d attempts", len(hooks), d.Attempts)
	}
	sameWebhookID(t, hooks, d.EventID)
	list := archivedHooks(t, api)
	if len(list) != 1 {
		t.Fatalf("archived deliveries: %v, want the one given up", list)
	}
	a := list[0]
	if a["job_id"] != j.JobID || a["event_id"] != d.EventID || a["type"] != "job.succeeded" || a["url"] != rcv.url() ||
		a["attempts"] != float64(d.Attempts) || !strings.Contains(fmt.Sprint(a["last_error"]), "500") || a["id"] == "" {
		t.Fatalf("archived delivery %v, the record has %+v", a, d)
	}
	got := outcomes(t, worker)
	if got["expired"] != 1 || got["failed"] != float64(d.Attempts-1) || got["delivered"] != 0 {
		t.Fatalf("outcomes %v after %d attempts, want %d failed and 1 expired", got, d.Attempts, d.Attempts-1)
	}
	t.Logf("gave up after %d attempts, %s after the event", d.Attempts, d.At.Sub(*j.FinishedAt).Round(time.Millisecond))
}

// A receiver asking for an hour (429, Retry-After: 3600) does not hold a
// delivery past its retry period: its next attempt comes at the end of the
// period, fails, and that attempt is the one counted expired; the delivery
// is archived, not left waiting for the hour.
func TestWebhookLongRetryAfterExpiresAtTheEndOfTheRetryPeriod(t *testing.T) {
	rcv := startScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	const retryFor = 2 * time.Second
	api, worker := hookFleet(t, newSecret(t), map[string]string{
		"CHATFLEET_WEBHOOK_RETRY_BASE": "500ms", "CHATFLEET_WEBHOOK_RETRY_FOR": retryFor.String(),
	}, rcv.url())
	c := client.New(api)
	j := submitHooked(t, c, "expires")
	ds := awaitHooks(t, c, j.JobID, 30*time.Second, "gave_up", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].State == "gave_up"
	})
	d := ds[0]
	if d.Attempts < 2 || d.StatusCode != http.StatusTooManyRequests || d.At.Sub(*j.FinishedAt) < retryFor {
		t.Fatalf("given up: %+v (%s after the event), want a retried 429 past the retry period of %s", d, d.At.Sub(*j.FinishedAt), retryFor)
	}
	hooks := rcv.got()
	if len(hooks) != d.Attempts {
		t.Fatalf("the receiver got %d requests, the record counts %d attempts", len(hooks), d.Attempts)
	}
	sameWebhookID(t, hooks, d.EventID)
	// Every attempt but the last was rate limited; the last expired.
	got := outcomes(t, worker)
	if got["expired"] != 1 || got["rate_limited"] != float64(d.Attempts-1) || got["failed"] != 0 {
		t.Fatalf("outcomes %v after %d attempts, want %d rate_limited and 1 expired", got, d.Attempts, d.Attempts-1)
	}
	if list := archivedHooks(t, api); len(list) != 1 || list[0]["event_id"] != d.EventID {
		t.Fatalf("archived deliveries: %v, want the expired one", list)
	}
}

// A 3xx is a failed attempt, never followed: receivers answering 302 and 307
// with a Location on a second receiver are retried under their own URLs, the
// status recorded on the job, and the second receiver hears nothing.
func TestWebhookRedirectIsNotFollowed(t *testing.T) {
	target := startScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	redirect := func(code int) *scripted {
		return startScripted(t, func(_ int, w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, target.url(), code) })
	}
	found, temporary := redirect(http.StatusFound), redirect(http.StatusTemporaryRedirect)
	api, _ := hookFleet(t, newSecret(t), map[string]string{"CHATFLEET_WEBHOOK_RETRY_BASE": "500ms"}, found.url(), temporary.url())
	c := client.New(api)
	j := submitHooked(t, c, "redirected")
	// Two attempts each: the 3xx was taken as a failure and retried (a
	// delivery that ended instead fails the checks below).
	ds := awaitHooks(t, c, j.JobID, 30*time.Second, "two attempts at each receiver", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 2 && (ds[0].Attempts >= 2 && ds[1].Attempts >= 2 || ds[0].State == "delivered" || ds[1].State == "delivered")
	})
	want := map[string]int{found.url(): http.StatusFound, temporary.url(): http.StatusTemporaryRedirect}
	for _, d := range ds {
		if d.StatusCode != want[d.URL] || d.State != "retrying" || !strings.Contains(d.Error, "redirect") {
			t.Fatalf("delivery to %s: %+v, want retrying with status %d", d.URL, d, want[d.URL])
		}
	}
	for _, r := range []*scripted{found, temporary} {
		hooks := r.got()
		if len(hooks) < 2 {
			t.Fatalf("the redirecting receiver got %d requests, want the retries", len(hooks))
		}
		sameWebhookID(t, hooks, ds[0].EventID)
	}
	if n := len(target.got()); n != 0 {
		t.Fatalf("the redirects' target got %d requests", n)
	}
}

// An attempt is cut at CHATFLEET_WEBHOOK_TIMEOUT: a receiver slower than it
// sees the worker hang up, the attempt is recorded as timed out and retried
// under the same webhook-id, and the prompt answer to the retry delivers it.
func TestWebhookAttemptTimesOut(t *testing.T) {
	const slow = 15 * time.Second // far past the timeout
	hungUp := make(chan time.Duration, 1)
	rcv := startScripted(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			start := time.Now()
			select {
			case <-r.Context().Done(): // the worker closed the connection
				hungUp <- time.Since(start)
				return
			case <-time.After(slow):
			}
		}
		w.WriteHeader(http.StatusOK)
	})
	// A retry delay of 3 s (down to about 1.4 s with jitter and asynq's
	// whole seconds) leaves the first attempt's record in view for the poll.
	api, worker := hookFleet(t, newSecret(t), map[string]string{
		"CHATFLEET_WEBHOOK_TIMEOUT": "1s", "CHATFLEET_WEBHOOK_RETRY_BASE": "3s",
	}, rcv.url())
	c := client.New(api)
	j := submitHooked(t, c, "slow-receiver")
	first := awaitHooks(t, c, j.JobID, 30*time.Second, "the first attempt's end", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].Attempts >= 1 && ds[0].State != "pending"
	})[0]
	if first.Attempts != 1 || first.State != "retrying" || first.StatusCode != 0 || !strings.Contains(first.Error, "timed out") {
		t.Fatalf("first attempt: %+v, want retrying after a time-out", first)
	}
	select {
	case d := <-hungUp:
		t.Logf("the worker hung up after %s", d.Round(time.Millisecond))
	case <-time.After(slow / 2):
		t.Fatal("the slow receiver's request was never abandoned")
	}
	d := awaitHooks(t, c, j.JobID, 30*time.Second, "delivered", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].State == "delivered"
	})[0]
	if d.Attempts != 2 || d.StatusCode != http.StatusOK || d.EventID != first.EventID {
		t.Fatalf("delivered: %+v, want the second attempt answered 200", d)
	}
	hooks := rcv.got()
	if len(hooks) != 2 {
		t.Fatalf("the receiver got %d requests, want the cut one and its retry", len(hooks))
	}
	sameWebhookID(t, hooks, d.EventID)
	if got := outcomes(t, worker); got["failed"] != 1 || got["delivered"] != 1 {
		t.Fatalf("outcomes %v, want 1 failed and 1 delivered", got)
	}
}

// A 429's and a 503's Retry-After (in seconds, and as an HTTP date) hold the
// next attempt back at least that long, though the retry base is 200 ms.
func TestWebhookHonoursRetryAfter(t *testing.T) {
	const wait = 3         // seconds
	var until atomic.Value // the HTTP date the 503 named
	rcv := startScripted(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		switch n {
		case 0:
			w.Header().Set("Retry-After", strconv.Itoa(wait))
			w.WriteHeader(http.StatusTooManyRequests)
		case 1:
			at := time.Now().Add(wait * time.Second).UTC()
			until.Store(at.Truncate(time.Second)) // what the date says
			w.Header().Set("Retry-After", at.Format(http.TimeFormat))
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusOK)
		}
	})
	api, worker := hookFleet(t, newSecret(t), map[string]string{"CHATFLEET_WEBHOOK_RETRY_BASE": "200ms"}, rcv.url())
	c := client.New(api)
	j := submitHooked(t, c, "rate-limited")
	d := awaitHooks(t, c, j.JobID, 30*time.Second, "delivered", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].State == "delivered"
	})[0]
	hooks := rcv.got()
	if d.Attempts != 3 || len(hooks) != 3 {
		t.Fatalf("delivered %+v after %d requests, want the third attempt", d, len(hooks))
	}
	sameWebhookID(t, hooks, d.EventID)
	gap1, gap2 := hooks[1].at.Sub(hooks[0].at), hooks[2].at.Sub(hooks[1].at)
	t.Logf("attempts %s and %s apart", gap1.Round(time.Millisecond), gap2.Round(time.Millisecond))
	if gap1 < wait*time.Second {
		t.Fatalf("the attempt after a 429 with Retry-After: %d came %s later", wait, gap1)
	}
	if at := until.Load().(time.Time); hooks[2].at.Before(at) {
		t.Fatalf("the attempt after a 503 with Retry-After: %s came at %s, before that", at.Format(http.TimeFormat), hooks[2].at.UTC().Format(time.RFC3339Nano))
	}
	if got := outcomes(t, worker); got["rate_limited"] != 1 || got["failed"] != 1 || got["delivered"] != 1 {
		t.Fatalf("outcomes %v, want 1 rate_limited, 1 failed (503), 1 delivered", got)
	}
}

// An archived (gave_up) delivery is re-delivered by the admin API: while the
// receiver still fails, one attempt, counted expired, and archived again at
// once; once it is healthy, one attempt under the same webhook-id with a
// valid signature, the delivery delivered and no longer archived. Unknown
// ids, and the delivered one, answer 404.
func TestWebhookRedeliveryOfAGaveUpDelivery(t *testing.T) {
	var healthy atomic.Bool
	rcv := startScripted(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		if healthy.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusInternalServerError)
	})
	secret := newSecret(t)
	api, worker := hookFleet(t, secret, map[string]string{
		"CHATFLEET_WEBHOOK_RETRY_BASE": "500ms", "CHATFLEET_WEBHOOK_RETRY_FOR": "2s",
	}, rcv.url())
	c := client.New(api)
	j := submitHooked(t, c, "redeliver")
	d := awaitHooks(t, c, j.JobID, 30*time.Second, "gave_up", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].State == "gave_up"
	})[0]
	// The archived list's entry is where the delivery's id comes from.
	var id string
	for deadline := time.Now().Add(10 * time.Second); id == ""; time.Sleep(50 * time.Millisecond) {
		if list := archivedHooks(t, api); len(list) == 1 && list[0]["event_id"] == d.EventID {
			id, _ = list[0]["id"].(string)
		} else if time.Now().After(deadline) {
			t.Fatalf("archived deliveries: %v, want the given up one", list)
		}
	}
	if r := hookAdmin(t, api, http.MethodPost, "/admin/api/webhooks/"+d.EventID+":wh_000000000000/redeliver"); r.Status != http.StatusNotFound {
		t.Fatalf("re-deliver an unknown delivery: %d %s, want 404", r.Status, r.Raw)
	}

	// Still failing: one more attempt, expired at once, archived again.
	before := len(rcv.got())
	if r := hookAdmin(t, api, http.MethodPost, "/admin/api/webhooks/"+id+"/redeliver"); r.Status != http.StatusOK || r.Body["id"] != id || r.Body["state"] != "pending" {
		t.Fatalf("re-deliver: %d %s", r.Status, r.Raw)
	}
	again := awaitHooks(t, c, j.JobID, 15*time.Second, "the failed re-delivery's end", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].State == "gave_up" && ds[0].At.After(d.At)
	})[0]
	if again.StatusCode != http.StatusInternalServerError || again.EventID != d.EventID {
		t.Fatalf("after a failed re-delivery: %+v", again)
	}
	t.Logf("attempts on the record: %d when given up, %d after the failed re-delivery", d.Attempts, again.Attempts)
	time.Sleep(1500 * time.Millisecond) // past the retry delay: no retry follows
	if n := len(rcv.got()) - before; n != 1 {
		t.Fatalf("a failing re-delivery made %d attempts, want one", n)
	}
	if got := outcomes(t, worker); got["expired"] != 2 || got["delivered"] != 0 {
		t.Fatalf("outcomes %v, want the failed re-delivery counted expired (2 in all)", got)
	}
	if list := archivedHooks(t, api); len(list) != 1 || list[0]["id"] != id {
		t.Fatalf("archived deliveries after a failed re-delivery: %v, want %s again", list, id)
	}

	// Healthy: delivered under the same webhook-id, signed with the secret.
	healthy.Store(true)
	before = len(rcv.got())
	if r := hookAdmin(t, api, http.MethodPost, "/admin/api/webhooks/"+id+"/redeliver"); r.Status != http.StatusOK {
		t.Fatalf("re-deliver: %d %s", r.Status, r.Raw)
	}
	done := awaitHooks(t, c, j.JobID, 15*time.Second, "delivered", func(ds []client.WebhookDelivery) bool {
		return len(ds) == 1 && ds[0].State == "delivered"
	})[0]
	hooks := rcv.got()
	if done.EventID != d.EventID || done.StatusCode != http.StatusOK || len(hooks) != before+1 {
		t.Fatalf("delivered %+v after %d requests (%d before), want one more under event %s", done, len(hooks), before, d.EventID)
	}
	sameWebhookID(t, hooks, d.EventID)
	h := hooks[len(hooks)-1]
	verifier := openai.NewClient(option.WithWebhookSecret(secret), option.WithAPIKey("unused"))
	if err := verifier.Webhooks.VerifySignature(h.body, h.header); err != nil {
		t.Fatalf("the re-delivery's signature does not verify: %v\n%v\n%s", err, h.header, h.body)
	}
	if string(h.body) != string(hooks[0].body) {
		t.Fatalf("the re-delivery's body %s differs from the first attempt's %s", h.body, hooks[0].body)
	}
	if list := archivedHooks(t, api); len(list) != 0 {
		t.Fatalf("archived deliveries after the re-delivery: %v", list)
	}
	// Delivered, it is no archived delivery any more (docs/api.md: 404).
	if r := hookAdmin(t, api, http.MethodPost, "/admin/api/webhooks/"+id+"/redeliver"); r.Status != http.StatusNotFound {
		t.Fatalf("re-deliver a delivered delivery: %d %s, want 404", r.Status, r.Raw)
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(rcv.got()); n != before+1 {
		t.Fatalf("the receiver got %d requests, want %d", n, before+1)
	}
}
