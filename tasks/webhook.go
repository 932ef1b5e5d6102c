package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"time"
)

// TypeWebhook is the task type of one webhook delivery: one event to one
// endpoint. Never rename it once shipped.
const TypeWebhook = "webhook:deliver"

// QueueWebhooks is the deliveries' own queue, served by a server of its own
// in each worker, so that a slow receiver never holds a chat job's slot. It
// is named apart from the chat queues (QueueName's "chatfleet-" prefix), so
// that nothing that looks for chat queues or chat workers takes it for one.
const QueueWebhooks = "chatfleet.webhooks"

// Webhook event types: the Responses API's are OpenAI's own, so that its SDKs
// parse them; the jobs API's follow the same pattern.
const (
	EventResponseCompleted  = "response.completed"
	EventResponseFailed     = "response.failed"
	EventResponseCancelled  = "response.cancelled"
	EventResponseIncomplete = "response.incomplete"
	EventJobSucceeded       = "job.succeeded"
	EventJobFailed          = "job.failed"
	EventJobCanceled        = "job.canceled"
	EventBatchCompleted     = "batch.completed"
	EventBatchFailed        = "batch.failed"
	EventBatchExpired       = "batch.expired"
	EventBatchCancelled     = "batch.cancelled"
)

// WebhookEvents are every event type an endpoint may subscribe to.
var WebhookEvents = []string{EventResponseCompleted, EventResponseFailed, EventResponseCancelled, EventResponseIncomplete,
	EventJobSucceeded, EventJobFailed, EventJobCanceled,
	EventBatchCompleted, EventBatchFailed, EventBatchExpired, EventBatchCancelled}

// WebhookPayloadVersion is the delivery payload version this build writes.
const WebhookPayloadVersion = 1

// WebhookPayload is one delivery. The body is built once, when the job ends,
// so every attempt sends the same bytes under the same webhook-id (only the
// timestamp and signature change). The secret is not in it: the worker signs
// with the tenant's current secret at each attempt.
type WebhookPayload struct {
	V         int             `json:"v"`
	ID        string          `json:"id"`   // the event id: the webhook-id header
	Type      string          `json:"type"` // the event type
	Tenant    string          `json:"tenant"`
	JobID     string          `json:"job_id"`             // the job whose end it tells, whose record keeps its outcome
	BatchID   string          `json:"batch_id,omitempty"` // or the batch (no record keeps its outcome)
	URL       string          `json:"url"`
	Target    string          `json:"target"` // the delivery's name on the job record
	CreatedAt time.Time       `json:"created_at"`
	Body      json.RawMessage `json:"body"`
}

// EncodeWebhook encodes a delivery payload.
func EncodeWebhook(p WebhookPayload) ([]byte, error) {
	p.V = WebhookPayloadVersion
	return json.Marshal(p)
}

// DecodeWebhook decodes a delivery payload of a version this build knows.
func DecodeWebhook(b []byte) (WebhookPayload, error) {
	var p WebhookPayload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("decode webhook payload: %w", err)
	}
	if p.V != WebhookPayloadVersion {
		return p, fmt.Errorf("webhook payload version %d: this worker reads version %d", p.V, WebhookPayloadVersion)
	}
	if p.ID == "" || p.URL == "" || (p.JobID == "") == (p.BatchID == "") {
		return p, fmt.Errorf("webhook payload without id or url, or without one of job id and batch id")
	}
	return p, nil
}

// ValidWebhookURL checks a receiver's URL: absolute http(s), a host without
// an IPv6 zone, no credentials. Whether plain http and private addresses are
// allowed is decided at delivery.
func ValidWebhookURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("not a URL")
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return fmt.Errorf("must be an https:// URL, got scheme %q", u.Scheme)
	}
	if u.Hostname() == "" {
		return errors.New("has no host")
	}
	// A zone (fe80::1%25eth0) names a network interface of whichever worker
	// sends, so the URL means another receiver on each host; only link-local
	// and other private addresses take one.
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil && ip.Zone() != "" {
		return fmt.Errorf("must not name an IPv6 zone (%%%s)", ip.Zone())
	}
	if u.User != nil {
		return errors.New("must not hold credentials")
	}
	if len(raw) > 2048 {
		return errors.New("longer than 2048 bytes")
	}
	return nil
}
