package store

import (
	"context"
	"time"

	"github.com/chatfleet/chatfleet/tasks"
)

// Reader is the store's read side, for every package but the job lifecycle:
// the front doors, the stream, the webhooks. It reaches no write: a change
// to a job, its log or its deliveries goes through jobs.Manager, which holds
// the Store itself.
type Reader struct{ s *Store }

// Reader returns the store's read side.
func (s *Store) Reader() Reader { return Reader{s} }

// Get reads a record (Store.Get).
func (r Reader) Get(ctx context.Context, id string) (Job, error) { return r.s.Get(ctx, id) }

// List returns a page of a tenant's jobs, newest first (Store.List).
func (r Reader) List(ctx context.Context, tenant string, f ListFilter, limit int, after Cursor) ([]Job, *Cursor, error) {
	return r.s.List(ctx, tenant, f, limit, after)
}

// Events returns a job's log after seq `after`, oldest first (Store.Events).
func (r Reader) Events(ctx context.Context, id string, after int64) ([]Event, error) {
	return r.s.Events(ctx, id, after)
}

// Reach returns the highest seq a follower of a job may have read, and
// whether its log has ended (Store.Reach).
func (r Reader) Reach(ctx context.Context, id string) (int64, bool, error) {
	return r.s.Reach(ctx, id)
}

// History returns a session's messages (Store.History).
func (r Reader) History(ctx context.Context, tenant, session string) ([]Message, error) {
	return r.s.History(ctx, tenant, session)
}

// Usage returns a tenant's usage per day and model (Store.Usage).
func (r Reader) Usage(ctx context.Context, tenant string, from, to time.Time) ([]UsageRow, error) {
	return r.s.Usage(ctx, tenant, from, to)
}

// Response reads a response's record (Store.Response).
func (r Reader) Response(ctx context.Context, id string) (Response, error) {
	return r.s.Response(ctx, id)
}

// ResponseChain assembles the conversation that a stored response ends
// (Store.ResponseChain).
func (r Reader) ResponseChain(ctx context.Context, prev, tenant string) ([]tasks.ChatMessage, error) {
	return r.s.ResponseChain(ctx, prev, tenant)
}

// The Batch API's files and batches (files.go, batches.go).

// GetFile reads a tenant's file's metadata (Store.GetFile).
func (r Reader) GetFile(ctx context.Context, tenant, id string) (File, error) {
	return r.s.GetFile(ctx, tenant, id)
}

// FileContent reads a tenant's file's content (Store.FileContent).
func (r Reader) FileContent(ctx context.Context, tenant, id string) ([]byte, error) {
	return r.s.FileContent(ctx, tenant, id)
}

// ListFiles lists a tenant's files, newest first (Store.ListFiles).
func (r Reader) ListFiles(ctx context.Context, tenant, after string, limit int) ([]File, bool, error) {
	return r.s.ListFiles(ctx, tenant, after, limit)
}

// GetBatch reads a tenant's batch (Store.GetBatch).
func (r Reader) GetBatch(ctx context.Context, tenant, id string) (Batch, error) {
	return r.s.GetBatch(ctx, tenant, id)
}

// ListBatches lists a tenant's batches, newest first (Store.ListBatches).
func (r Reader) ListBatches(ctx context.Context, tenant, after string, limit int) ([]Batch, bool, error) {
	return r.s.ListBatches(ctx, tenant, after, limit)
}

// ActiveBatches lists the batches not yet ended (Store.ActiveBatches).
func (r Reader) ActiveBatches(ctx context.Context) ([][2]string, error) {
	return r.s.ActiveBatches(ctx)
}

// BatchRunningLines reads a batch's lines that are jobs now (Store.BatchRunningLines).
func (r Reader) BatchRunningLines(ctx context.Context, tenant, id string) (map[int]string, error) {
	return r.s.BatchRunningLines(ctx, tenant, id)
}

// BatchResultLines reads a batch's answered lines (Store.BatchResultLines).
func (r Reader) BatchResultLines(ctx context.Context, tenant, id string) (map[int]string, error) {
	return r.s.BatchResultLines(ctx, tenant, id)
}

// Statuses reads the status of jobs (Store.Statuses).
func (r Reader) Statuses(ctx context.Context, ids []string) ([]string, error) {
	return r.s.Statuses(ctx, ids)
}
