package jobs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/tasks"
)

// Archived is a job asynq gave up on (the dead letter queue).
type Archived struct {
	JobID        string    `json:"job_id"`
	Queue        string    `json:"queue"`
	LastError    string    `json:"last_error"`
	LastFailedAt time.Time `json:"last_failed_at"`
	Retried      int       `json:"retried"`
}

// ListArchived returns the archived jobs of every queue, newest failure first.
func (m *Manager) ListArchived() ([]Archived, error) {
	var out []Archived
	for q := range tasks.QueueSet(m.opt.QueueSpread) {
		for page := 1; ; page++ {
			infos, err := m.insp.ListArchivedTasks(q, asynq.Page(page), asynq.PageSize(500))
			if errors.Is(err, asynq.ErrQueueNotFound) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("list archived in %s: %w", q, err)
			}
			for _, ti := range infos {
				out = append(out, Archived{JobID: ti.ID, Queue: q, LastError: ti.LastErr, LastFailedAt: ti.LastFailedAt, Retried: ti.Retried})
			}
			if len(infos) < 500 {
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastFailedAt.After(out[j].LastFailedAt) })
	return out, nil
}

// Rerun runs an archived job again from its first attempt: its record is
// reopened (queued, at the end of its session's order: behind the session's
// unfinished jobs, before any submitted later) and its task is enqueued
// afresh under the same id, so asynq's retry count starts over too (when an
// earlier job of the session is unfinished, once its turn comes). Its times
// start again: it is submitted now, and its session's turn is the one it
// waits for now.
func (m *Manager) Rerun(ctx context.Context, id string) error {
	j, err := m.st.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("job %s: %w", id, err)
	}
	info, err := m.insp.GetTaskInfo(j.Queue, j.Task)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		// No task: still in the scheduler, run directly by a worker, or
		// ended and its task gone. An archived job always has its task.
		return fmt.Errorf("job %s (%s): no task: %w", id, j.Status, ErrNotArchived)
	}
	if err != nil {
		return fmt.Errorf("job %s: task: %w", id, err)
	}
	if info.State != asynq.TaskStateArchived {
		return fmt.Errorf("job %s: task is %s: %w", id, info.State, ErrNotArchived)
	}
	p, err := tasks.DecodeChat(info.Payload)
	if err != nil {
		return fmt.Errorf("job %s: %w", id, err)
	}
	p.SubmittedAt = time.Now().UTC()
	payload, err := p.Encode()
	if err != nil {
		return fmt.Errorf("job %s: %w", id, err)
	}
	head, err := m.st.Requeue(ctx, j, payload)
	if err != nil {
		return fmt.Errorf("job %s: %w", id, err)
	}
	if err := m.insp.DeleteTask(j.Queue, j.Task); err != nil {
		return fmt.Errorf("job %s: remove archived task: %w", id, err)
	}
	if !head {
		return nil // the release that gives it the turn schedules it
	}
	if err := m.schedule(ctx, j.ID, j.Tenant, j.SessionID, j.Queue, j.Model, j.CreatedAt); err != nil {
		return fmt.Errorf("job %s: %w", id, err)
	}
	return nil
}
