package webhooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Options tune delivery.
type Options struct {
	AllowPrivate bool          // loopback, private and link-local receivers allowed
	AllowHTTP    bool          // plain http receivers allowed
	Timeout      time.Duration // one attempt, connect to last byte (default 10s)
	RetryBase    time.Duration // the first retry's delay (default 5s); doubles after each
	RetryFor     time.Duration // retried this long after the event, then archived (default 24h)
}

func (o *Options) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 5 * time.Second
	}
	if o.RetryFor <= 0 {
		o.RetryFor = 24 * time.Hour
	}
}

// Delivery states on a job's record.
const (
	StatePending   = "pending"
	StateDelivered = "delivered"
	StateRetrying  = "retrying"
	StateRefused   = "refused"
	StateGaveUp    = "gave_up"
)

// Delivery is how one receiver's delivery of a job's event went, as the
// job's record keeps it (the receiver's answer is never kept beyond its
// status code).
type Delivery struct {
	URL        string    `json:"url"`
	Event      string    `json:"event"`
	EventID    string    `json:"event_id"`
	State      string    `json:"state"`
	Attempts   int       `json:"attempts"`
	StatusCode int       `json:"status_code,omitempty"`
	Error      string    `json:"error,omitempty"`
	At         time.Time `json:"at"`
}

// stateRank orders the states: pending → retrying → delivered | refused |
// gave_up. An entry never moves back (a Flush's pending can land after the
// delivery it enqueued ended); an end is replaced only by another end, the
// outcome of an operator's re-delivery.
var stateRank = map[string]int{StatePending: 1, StateRetrying: 2, StateDelivered: 3, StateRefused: 3, StateGaveUp: 3}

func record(ctx context.Context, jm *jobs.Manager, p tasks.WebhookPayload, d Delivery) error {
	if p.JobID == "" { // a batch's event: no job record keeps it
		return nil
	}
	d.URL, d.Event, d.EventID, d.At = p.URL, p.Type, p.ID, time.Now().UTC()
	b, _ := json.Marshal(d)
	return jm.RecordDelivery(ctx, p.JobID, store.DeliveryEntry{Target: p.Target, EventID: p.ID, Rank: stateRank[d.State], JSON: b})
}

// Deliverer sends delivery tasks: the asynq handler of tasks.TypeWebhook.
type Deliverer struct {
	jobs   *jobs.Manager // records each delivery's outcome in its job's record
	reg    *Registry
	opt    Options
	client *http.Client
	m      *metrics
}

// NewDeliverer returns a deliverer signing with reg's secrets; jm records
// how each delivery went.
func NewDeliverer(jm *jobs.Manager, reg *Registry, opt Options, m prometheus.Registerer) *Deliverer {
	opt.defaults()
	dialer := &net.Dialer{Timeout: min(5*time.Second, opt.Timeout)}
	if !opt.AllowPrivate {
		dialer.Control = guard
	}
	transport := &http.Transport{
		Proxy:                 nil, // a proxy would make the guard check the proxy's address
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   min(5*time.Second, opt.Timeout),
		ResponseHeaderTimeout: opt.Timeout,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
	}
	client := &http.Client{Transport: transport, Timeout: opt.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &Deliverer{jobs: jm, reg: reg, opt: opt, client: client, m: newMetrics(m)}
}

// Delivery outcomes, the label values of chatfleet_webhook_deliveries_total.
const (
	outcomeDelivered   = "delivered"
	outcomeFailed      = "failed"       // retried later
	outcomeRateLimited = "rate_limited" // 429: retried after its Retry-After
	outcomeRefused     = "refused"      // not contacted: address or scheme refused
	outcomeExpired     = "expired"      // failed past the retry period: archived
)

// retryAfterError asks for the next attempt no sooner than after.
type retryAfterError struct {
	err   error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// ProcessTask delivers one event to one receiver.
func (d *Deliverer) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := tasks.DecodeWebhook(t.Payload())
	if err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	attempt := 1
	if n, ok := asynq.GetRetryCount(ctx); ok {
		attempt = n + 1
	}
	start := time.Now()
	code, after, err := d.send(ctx, p)
	d.m.seconds.Observe(time.Since(start).Seconds())
	var refused *refusedError
	switch {
	case err == nil:
		d.m.outcome(outcomeDelivered)
		_ = record(ctx, d.jobs, p, Delivery{State: StateDelivered, Attempts: attempt, StatusCode: code})
		return nil
	case errors.As(err, &refused):
		d.m.outcome(outcomeRefused)
		_ = record(ctx, d.jobs, p, Delivery{State: StateRefused, Attempts: attempt, Error: refused.reason})
		return fmt.Errorf("webhook to %s refused: %w: %w", hostOf(p.URL), err, asynq.SkipRetry)
	case time.Since(p.CreatedAt) >= d.opt.RetryFor:
		d.m.outcome(outcomeExpired)
		_ = record(ctx, d.jobs, p, Delivery{State: StateGaveUp, Attempts: attempt, StatusCode: code, Error: err.Error()})
		return fmt.Errorf("webhook to %s failed for %s, archived: %w: %w", hostOf(p.URL), d.opt.RetryFor, err, asynq.SkipRetry)
	}
	if code == http.StatusTooManyRequests {
		d.m.outcome(outcomeRateLimited)
	} else {
		d.m.outcome(outcomeFailed)
	}
	_ = record(ctx, d.jobs, p, Delivery{State: StateRetrying, Attempts: attempt, StatusCode: code, Error: err.Error()})
	return &retryAfterError{err: fmt.Errorf("webhook to %s: %w", hostOf(p.URL), err), after: after}
}

// send makes one attempt: the status code (0 when there was no answer), a
// Retry-After the receiver asked for, and why it did not count as delivered.
func (d *Deliverer) send(ctx context.Context, p tasks.WebhookPayload) (int, time.Duration, error) {
	u, err := url.Parse(p.URL)
	if err != nil {
		return 0, 0, &refusedError{"the URL does not parse"}
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && d.opt.AllowHTTP) {
		return 0, 0, &refusedError{fmt.Sprintf("scheme %s: https only (CHATFLEET_WEBHOOK_ALLOW_HTTP=true allows http)", u.Scheme)}
	}
	secret, ok := d.reg.secret(p.Tenant, p.URL)
	if !ok {
		return 0, 0, errors.New("the tenant has no webhook secret in CHATFLEET_WEBHOOKS_FILE")
	}
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return 0, 0, fmt.Errorf("webhook secret: %w", err)
	}
	now := time.Now()
	sig, err := wh.Sign(p.ID, now, p.Body)
	if err != nil {
		return 0, 0, fmt.Errorf("sign: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL, strings.NewReader(string(p.Body)))
	if err != nil {
		return 0, 0, &refusedError{"the URL does not make a request: " + err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "chatfleet-webhooks")
	req.Header.Set("webhook-id", p.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := d.client.Do(req)
	if err != nil {
		var refused *refusedError
		if errors.As(err, &refused) {
			return 0, 0, refused
		}
		return 0, 0, errors.New(describe(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10)) // read a little, show none
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, 0, nil
	}
	after := retryAfter(resp.Header.Get("Retry-After"))
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return resp.StatusCode, after, fmt.Errorf("answered %d: redirects are not followed", resp.StatusCode)
	}
	return resp.StatusCode, after, fmt.Errorf("answered %d", resp.StatusCode)
}

// describe says why an attempt got no answer, without the URL (which the
// error repeats) or anything the receiver sent.
func describe(err error) string {
	var op *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return "timed out"
	case errors.As(err, &op) && op.Op == "dial":
		return "could not connect: " + op.Err.Error()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// retryAfter reads a Retry-After in seconds or as an HTTP date (0: none).
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}

func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Host
	}
	return "?"
}

// maxDelay caps the backoff between two attempts.
const maxDelay = time.Hour

// RetryDelay is the deliveries' asynq RetryDelayFunc (n: the retries so far):
// exponential from RetryBase with jitter (±20 %), capped at an hour; a
// receiver's longer Retry-After wins, within the retry period. asynq keeps a
// retry's time in whole seconds: a delay ends up to a second early, so a
// Retry-After is waited a second longer, never less than the receiver asked.
func (d *Deliverer) RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	delay := d.opt.RetryBase << min(max(n, 0), 20)
	delay = min(delay, maxDelay)
	delay = time.Duration(float64(delay) * (0.8 + 0.4*rand.Float64()))
	var ra *retryAfterError
	if errors.As(err, &ra) && ra.after > 0 && ra.after+time.Second > delay {
		delay = min(ra.after+time.Second, d.opt.RetryFor)
	}
	return delay
}
