package webhooks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// A batch's end (the Batch API) is told by OpenAI's batch.* events to the
// tenant's endpoints that take them. The batch stays in the fleet's set of
// active batches until its events are enqueued (api/batchrun.go): that set
// is its outbox.

// batchEvent is the event of a batch that ended in status ("" for one that
// has not ended).
func batchEvent(status string) string {
	switch status {
	case store.BatchCompleted:
		return tasks.EventBatchCompleted
	case store.BatchFailed:
		return tasks.EventBatchFailed
	case store.BatchExpired:
		return tasks.EventBatchExpired
	case store.BatchCancelled:
		return tasks.EventBatchCancelled
	}
	return ""
}

// batchEnd is when a batch ended.
func batchEnd(b store.Batch) time.Time {
	for _, t := range []time.Time{b.CompletedAt, b.FailedAt, b.ExpiredAt, b.CancelledAt} {
		if !t.IsZero() {
			return t
		}
	}
	return b.CreatedAt
}

// FlushBatch enqueues the deliveries of an ended batch's event. Enqueueing
// twice is harmless: each delivery's task id comes from the event (the
// batch and its end) and the receiver.
func (o *Outbox) FlushBatch(ctx context.Context, b store.Batch) error {
	typ := batchEvent(b.Status)
	if typ == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(b.ID + "\n" + b.Status))
	id, at := "evt_"+hex.EncodeToString(sum[:12]), batchEnd(b)
	body, err := json.Marshal(envelope{ID: id, Object: "event", Type: typ, CreatedAt: at.Unix(),
		Data: map[string]string{"id": b.ID}})
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, e := range o.reg.byTenant[b.Tenant] {
		if !e.wants(typ) || seen[e.URL] {
			continue
		}
		seen[e.URL] = true
		p := tasks.WebhookPayload{ID: id, Type: typ, Tenant: b.Tenant, BatchID: b.ID, URL: e.URL,
			Target: target(e.URL), CreatedAt: at, Body: body}
		if err := o.enqueuePayload(ctx, p); err != nil {
			return err
		}
	}
	return nil
}
