package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/store"
)

// Reconcile brings a non-terminal record in line with asynq: a queued or
// retrying job whose task is missing or finished (its enqueue failed, it was
// lost, the worker that gave it its turn died before enqueueing it) is
// enqueued again under a new task id, or failed when it cannot be; one whose
// task asynq archived (a crash on the last attempt) is failed. A job that
// waits for its session's turn has no task and is left alone. It returns the
// record as it now stands.
func (m *Manager) Reconcile(ctx context.Context, j store.Job) (store.Job, error) {
	if _, err := m.reconcile(ctx, j); err != nil {
		return j, err
	}
	return m.st.Get(ctx, j.ID)
}

// handOffGrace is how long after its turn came a queued job may still be on
// its way to the scheduler.
const handOffGrace = 2 * time.Second

// Reconciler actions, the label values of chatfleet_reconciled_jobs_total.
const (
	actionRequeued = "requeued"
	actionFailed   = "failed"
	actionReleased = "released"
	// actionWaiting: the job waits for its session's turn (not counted).
	actionWaiting = "waiting"
)

// reconcile does Reconcile's work and says what it did ("" for nothing).
func (m *Manager) reconcile(ctx context.Context, j store.Job) (string, error) {
	// Both cases take time to arise (a schedule or an enqueue under way), so
	// young records skip the lookups: frequent polls stay cheap. A job whose
	// session turn came is young for a moment only: its schedule follows the
	// script that handed it the turn at once.
	young := time.Since(j.CreatedAt) < m.opt.OrphanAfter
	if !j.TurnAt.IsZero() {
		young = time.Since(j.TurnAt) < handOffGrace
	}
	if (j.Status != store.StatusQueued && j.Status != store.StatusRetrying) || young {
		return "", nil
	}
	if j.Status == store.StatusQueued {
		waiting, err := m.st.ParkIfWaiting(ctx, store.Unfinished{Tenant: j.Tenant, SessionID: j.SessionID, ID: j.ID})
		if err != nil || waiting {
			return actionWaiting, err
		}
		// Its turn has come: it waits in the scheduler for a slot, its
		// model's capacity or its tenant's share.
		if in, err := m.st.IsScheduled(ctx, j.ID); err != nil || in {
			return "", err
		}
	}
	info, err := m.insp.GetTaskInfo(j.Queue, j.Task)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) ||
		(err == nil && info.State == asynq.TaskStateCompleted):
		payload, err := m.st.Payload(ctx, j.ID)
		if err != nil {
			return "", err
		}
		if payload == nil {
			return actionFailed, m.fail(ctx, j, &store.JobError{Code: "lost", Message: "the job was accepted but its task was lost"})
		}
		return actionRequeued, m.requeue(ctx, j)
	case err != nil:
		return "", fmt.Errorf("inspect task: %w: %w", store.ErrUnavailable, err)
	case info.State == asynq.TaskStateArchived:
		// asynq's last error may hold upstream detail: operators read it
		// with `worker jobs archived`, tenants get a plain message.
		return actionFailed, m.fail(ctx, j, &store.JobError{Code: "failed", Message: "the job was abandoned after its last attempt"})
	}
	return "", nil
}

func (m *Manager) fail(ctx context.Context, j store.Job, reason *store.JobError) error {
	_, err := m.finish(ctx, j.ID, j.Tenant, j.SessionID, 0, store.Outcome{Status: store.StatusFailed, Error: reason})
	return err
}
