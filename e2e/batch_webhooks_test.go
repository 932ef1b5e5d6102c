package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// A batch that completes, one that fails validation and one that is
// cancelled each tell the tenant's endpoint once, with OpenAI's batch.*
// event that openai-go verifies and parses; lines send no job.* events of
// their own, and another tenant's endpoint hears nothing.
func TestBatchWebhooks(t *testing.T) {
	rd := testkit.StartRedis(t)
	rcv, other := startReceiver(t, "127.0.0.1:0", http.StatusOK), startReceiver(t, "127.0.0.1:0", http.StatusOK)
	secret := newSecret(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_LATENCY": "100ms",
		"CHATFLEET_WORKER_CONCURRENCY": "2", "CHATFLEET_WEBHOOK_ALLOW_PRIVATE": "true",
		"CHATFLEET_WEBHOOKS_FILE": webhooksFile(t, map[string]any{"tenant": "acme", "url": rcv.url, "secret": secret},
			map[string]any{"tenant": "beta", "url": other.url, "secret": newSecret(t)})})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))

	done := newBatch(t, oa, uploadBatch(t, oa, batchInput(3)).ID)
	bad := newBatch(t, oa, uploadBatch(t, oa, strings.Replace(batchInput(2), `"method":"POST"`, `"method":"GET"`, 1)).ID)
	cancelled := newBatch(t, oa, uploadBatch(t, oa, batchInput(40)).ID)
	if _, err := oa.Batches.Cancel(context.Background(), cancelled.ID); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{done.ID: "batch.completed", bad.ID: "batch.failed", cancelled.ID: "batch.cancelled"}
	for id, typ := range want {
		if b := awaitBatch(t, oa, id); "batch."+string(b.Status) != typ {
			t.Fatalf("batch %s ended %s, want the event %s", id, b.Status, typ)
		}
	}
	rcv.waitFor(t, 20*time.Second, "three batch events", func(h []hook) bool { return len(h) >= 3 })
	time.Sleep(time.Second) // nothing more comes
	verifier := openai.NewClient(option.WithWebhookSecret(secret), option.WithAPIKey("unused"))
	got := map[string]string{}
	for _, h := range rcv.got() {
		ev, err := verifier.Webhooks.Unwrap(h.body, h.header)
		if err != nil {
			t.Fatalf("openai-go refused the webhook: %v\n%s", err, h.body)
		}
		var id, evID string
		switch ev.Type {
		case "batch.completed":
			id, evID = ev.AsBatchCompleted().Data.ID, ev.AsBatchCompleted().ID
		case "batch.failed":
			id, evID = ev.AsBatchFailed().Data.ID, ev.AsBatchFailed().ID
		case "batch.cancelled":
			id, evID = ev.AsBatchCancelled().Data.ID, ev.AsBatchCancelled().ID
		default:
			t.Fatalf("unexpected event %s: %s", ev.Type, h.body)
		}
		if got[id] != "" {
			t.Fatalf("batch %s told twice: %s, then %s", id, got[id], ev.Type)
		}
		if !strings.HasPrefix(evID, "evt_") || h.header.Get("webhook-id") != evID {
			t.Fatalf("event id %q, webhook-id %q", evID, h.header.Get("webhook-id"))
		}
		got[id] = ev.Type
	}
	for id, typ := range want {
		if got[id] != typ {
			t.Errorf("batch %s: event %q, want %q", id, got[id], typ)
		}
	}
	if h := other.got(); len(h) != 0 {
		t.Fatalf("another tenant's endpoint got %d events: %s", len(h), h[0].body)
	}
}
