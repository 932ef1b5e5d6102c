package webhooks

import (
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Archived is a delivery asynq gave up on (refused, or failed for the whole
// retry period), as operators see it.
type Archived struct {
	ID           string    `json:"id"` // the delivery's task id, for Redeliver
	EventID      string    `json:"event_id"`
	Type         string    `json:"type"`
	Tenant       string    `json:"tenant"`
	JobID        string    `json:"job_id,omitempty"`
	BatchID      string    `json:"batch_id,omitempty"`
	URL          string    `json:"url"`
	Attempts     int       `json:"attempts"`
	LastError    string    `json:"last_error"`
	LastFailedAt time.Time `json:"last_failed_at"`
}

// ErrNoSuchDelivery is returned to re-deliver a delivery that is not archived.
var ErrNoSuchDelivery = errors.New("no such archived delivery")

// Admin lists and re-delivers archived deliveries.
type Admin struct{ insp *asynq.Inspector }

// NewAdmin returns the operators' view of the deliveries' queue.
func NewAdmin(insp *asynq.Inspector) *Admin { return &Admin{insp: insp} }

// ListArchived returns the archived deliveries, newest first (up to 500).
func (a *Admin) ListArchived() ([]Archived, error) {
	infos, err := a.insp.ListArchivedTasks(tasks.QueueWebhooks, asynq.PageSize(500))
	if errors.Is(err, asynq.ErrQueueNotFound) {
		return []Archived{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list archived webhooks: %w: %w", store.ErrUnavailable, err)
	}
	out := make([]Archived, 0, len(infos))
	for _, in := range infos {
		p, _ := tasks.DecodeWebhook(in.Payload)
		out = append(out, Archived{ID: in.ID, EventID: p.ID, Type: p.Type, Tenant: p.Tenant, JobID: p.JobID, BatchID: p.BatchID, URL: p.URL,
			Attempts: in.Retried + 1, LastError: in.LastErr, LastFailedAt: in.LastFailedAt})
	}
	return out, nil
}

// Redeliver runs an archived delivery again at once: one more attempt (the
// same webhook-id), archived again if it fails once its retry period is over.
func (a *Admin) Redeliver(id string) error {
	info, err := a.insp.GetTaskInfo(tasks.QueueWebhooks, id)
	if err == nil && info.State != asynq.TaskStateArchived {
		return ErrNoSuchDelivery
	}
	if err == nil {
		err = a.insp.RunTask(tasks.QueueWebhooks, id)
	}
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		return ErrNoSuchDelivery
	case err != nil:
		return fmt.Errorf("re-deliver: %w: %w", store.ErrUnavailable, err)
	}
	return nil
}
