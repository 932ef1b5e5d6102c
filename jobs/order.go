package jobs

import (
	"context"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/store"
)

// A session's turns run one at a time, in the order they were submitted, and
// a turn that waits holds no worker: only the session's head has a task in
// the queue (store/order.go). Whatever ends the head (its attempt, a cancel,
// the reconciler) gets the next job back from the same script and enqueues
// its task here, through asynq's client.

// finish records an outcome once (fenced when fence > 0) and hands the
// session's turn on.
func (m *Manager) finish(ctx context.Context, id, tenant, session string, fence int, o store.Outcome) (bool, error) {
	o.BudgetSpend = m.budgetSpend(tenant, o)
	f, err := m.st.Finish(ctx, id, tenant, session, fence, o)
	if err != nil {
		return false, err
	}
	m.dispatch(ctx, f.Next)
	if _, ok := m.opt.Budgets[tenant]; ok && f.First {
		m.settle(ctx, id)
	}
	if f.Notify && m.opt.Notify != nil {
		m.opt.Notify(ctx, id)
	}
	return f.First, nil
}

// dispatch schedules a session's job whose turn has come. When it cannot
// (Redis away, this process dying first), the reconciler does at the job's
// next check, which the release brought within store.HandOffCheck.
func (m *Manager) dispatch(ctx context.Context, next *store.Next) {
	if next == nil || next.Gone {
		return // none, or its record is gone: the reconciler forgets it
	}
	if err := m.schedule(ctx, next.ID, next.Tenant, next.Session, next.Queue, next.Model, next.CreatedAt); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("next_job_id", next.ID).Msg("could not schedule the session's next job; the reconciler will")
	}
}
