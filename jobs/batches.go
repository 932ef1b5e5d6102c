package jobs

import (
	"context"
	"time"

	"github.com/chatfleet/chatfleet/store"
)

// The Batch API's writes (its files, batches and their lines' answers), for
// the front door that runs them (api/batchrun.go); reads go through
// store.Reader. A batch's lines are jobs submitted through Submit.

// SaveFile stores a file (Store.SaveFile).
func (m *Manager) SaveFile(ctx context.Context, f store.File, content []byte) error {
	return m.st.SaveFile(ctx, f, content)
}

// DeleteFile removes a tenant's file (Store.DeleteFile).
func (m *Manager) DeleteFile(ctx context.Context, tenant, id string) error {
	return m.st.DeleteFile(ctx, tenant, id)
}

// CreateBatch writes a new batch (Store.CreateBatch).
func (m *Manager) CreateBatch(ctx context.Context, b store.Batch, keep time.Duration) error {
	return m.st.CreateBatch(ctx, b, keep)
}

// MoveBatch moves a batch between statuses (Store.MoveBatch).
func (m *Manager) MoveBatch(ctx context.Context, tenant, id string, from []string, to string, now time.Time, set ...string) (bool, error) {
	return m.st.MoveBatch(ctx, tenant, id, from, to, now, set...)
}

// DropActive takes a batch whose record is gone out of the active set
// (Store.DropActive).
func (m *Manager) DropActive(ctx context.Context, tenant, id string) error {
	return m.st.DropActive(ctx, tenant, id)
}

// ClaimBatch takes or renews a runner's claim on a batch (Store.ClaimBatch).
func (m *Manager) ClaimBatch(ctx context.Context, id, runner string, ttl time.Duration) (bool, error) {
	return m.st.ClaimBatch(ctx, id, runner, ttl)
}

// FedLine records that a batch's line is a job now (Store.FedLine).
func (m *Manager) FedLine(ctx context.Context, tenant, id string, line int, jobID string, keep time.Duration) error {
	return m.st.FedLine(ctx, tenant, id, line, jobID, keep)
}

// RecordLine keeps a batch line's answer once (Store.RecordLine).
func (m *Manager) RecordLine(ctx context.Context, tenant, id string, line int, ok bool, out string, keep time.Duration) (bool, error) {
	return m.st.RecordLine(ctx, tenant, id, line, ok, out, keep)
}

// DropLines removes the jobs of a tenant's batch lines whose answers their
// batches keep now (job id -> the line's Idempotency-Key hash;
// Store.PurgeLines), so that a batch costs Redis its lines in flight, not
// every line it ran. A tenant with a budget has the jobs' settled first
// (settling reads the record).
func (m *Manager) DropLines(ctx context.Context, tenant string, lines map[string]string) error {
	if _, ok := m.opt.Budgets[tenant]; ok {
		for id := range lines {
			if err := m.st.Settle(ctx, id, m.settleTTL); err != nil {
				return err
			}
		}
	}
	return m.st.PurgeLines(ctx, tenant, lines)
}

// DropBatchLines removes an ended batch's record of its lines: its output
// and error files hold them (Store.DropBatchLines).
func (m *Manager) DropBatchLines(ctx context.Context, tenant, id string) error {
	return m.st.DropBatchLines(ctx, tenant, id)
}

// SetBatchNext records how far a batch's lines have started (Store.SetBatchNext).
func (m *Manager) SetBatchNext(ctx context.Context, tenant, id string, next int) error {
	return m.st.SetBatchNext(ctx, tenant, id, next)
}
