package jobs

import (
	"context"

	"github.com/chatfleet/chatfleet/store"
)

// Cancel ends an unfinished job as canceled and stops it: a queued job's task
// is removed, a running job's provider call aborted. ErrFinished: it had
// finished already. It returns the record as it now stands.
func (m *Manager) Cancel(ctx context.Context, j store.Job, why string) (store.Job, error) {
	if store.Terminal(j.Status) {
		return j, ErrFinished
	}
	first, err := m.finish(ctx, j.ID, j.Tenant, j.SessionID, 0, store.Outcome{
		Status: store.StatusCanceled, Error: &store.JobError{Code: "canceled", Message: why},
	})
	if err != nil {
		return j, err
	}
	if !first {
		return j, ErrFinished // it finished between the read and the cancel
	}
	// The record is canceled, so no worker will run or retry the job; removing
	// the task and aborting a running call make it stop now. (A job that
	// waited for its session's turn has no task.)
	if err := m.insp.DeleteTask(j.Queue, j.Task); err != nil {
		_ = m.insp.CancelProcessing(j.Task)
	}
	return m.st.Get(ctx, j.ID)
}
