package jobs

import (
	"context"
	"time"

	"github.com/chatfleet/chatfleet/store"
)

// The webhooks' writes to a job: the outbox a job with webhooks enters when
// it ends, and each delivery's entry in its record. webhooks.Outbox and
// webhooks.Deliverer make them through these, each one call of the store.

// ClaimWebhooks takes up to limit ended jobs whose deliveries a sweep should
// enqueue, for claimFor (store.Store.ClaimWebhooks).
func (m *Manager) ClaimWebhooks(ctx context.Context, limit int, claimFor time.Duration) ([]string, error) {
	return m.st.ClaimWebhooks(ctx, limit, claimFor)
}

// WebhooksEnqueued takes a job out of the outbox once its deliveries are
// queued (store.Store.WebhooksEnqueued).
func (m *Manager) WebhooksEnqueued(ctx context.Context, id string) error {
	return m.st.WebhooksEnqueued(ctx, id)
}

// RecordDelivery notes in job id's record how a delivery to a target went
// (store.Store.RecordDelivery).
func (m *Manager) RecordDelivery(ctx context.Context, id string, e store.DeliveryEntry) error {
	return m.st.RecordDelivery(ctx, id, e)
}
