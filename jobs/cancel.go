package jobs

import (
	"context"
	"errors"

	"github.com/rs/zerolog"

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
	// The record is canceled, so no worker will run or retry the job; taking
	// it out of the scheduler, removing the task and aborting a running call
	// make it stop now. (A job that waited for its session's turn is in
	// neither.) The scheduler drops a canceled job it hands out anyway.
	if j.Status == store.StatusQueued {
		if err := m.st.Unschedule(ctx, j.ID); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("could not take the canceled job out of the scheduler; it is dropped when handed out")
		}
	}
	if err := m.insp.DeleteTask(j.Queue, j.Task); err != nil {
		_ = m.insp.CancelProcessing(j.Task)
	}
	// A job its worker runs without a task is stopped by its runner.
	if err := m.st.Interrupt(ctx, j.ID); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("could not tell the canceled job's worker to stop it; its call runs to the end")
	}
	return m.st.Get(ctx, j.ID)
}

// Purge removes everything that holds a job's content: its record, its event
// log and asynq's copy of its task. An unfinished job is canceled first.
func (m *Manager) Purge(ctx context.Context, j store.Job) error {
	if !store.Terminal(j.Status) {
		if _, err := m.Cancel(ctx, j, "the job was deleted"); err != nil && !errors.Is(err, ErrFinished) {
			return err
		}
	}
	if err := m.st.Purge(ctx, j.ID, j.Tenant); err != nil {
		return err
	}
	// asynq refuses to delete a task still being processed (the cancel just
	// aborted it): its copy then stays until asynq's retention.
	_ = m.insp.DeleteTask(j.Queue, j.Task)
	return nil
}
