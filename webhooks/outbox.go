package webhooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Outbox turns ended jobs into delivery tasks.
type Outbox struct {
	st   store.Reader
	jobs *jobs.Manager // takes jobs out of the outbox, records the pending deliveries
	q    *asynq.Client
	reg  *Registry
}

// NewOutbox returns the outbox that reads the jobs in st and changes them
// through jm, enqueueing through q.
func NewOutbox(st store.Reader, jm *jobs.Manager, q *asynq.Client, reg *Registry) *Outbox {
	return &Outbox{st: st, jobs: jm, q: q, reg: reg}
}

// maxRetry is asynq's retry cap for a delivery; the delivery's age decides
// when it stops (Deliverer), this only keeps asynq from stopping first.
const maxRetry = 100000

// retention keeps a delivered task's id a while: a sweep that takes up a job
// whose deliveries were enqueued (its outbox entry could not be removed)
// finds them and enqueues nothing twice.
const retention = 10 * time.Minute

// Flush enqueues the deliveries of an ended job and takes it out of the
// outbox. Enqueueing twice is harmless: each delivery's task id comes from
// its event and receiver.
func (o *Outbox) Flush(ctx context.Context, id string) error {
	j, err := o.st.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return o.jobs.WebhooksEnqueued(ctx, id) // purged or expired: nothing to tell
	}
	if err != nil {
		return err
	}
	typ := ""
	var sp Spec
	if j.Webhook != "" && json.Unmarshal([]byte(j.Webhook), &sp) == nil {
		typ = eventType(sp.Kind, j.Status)
	}
	if typ == "" { // no spec, or re-run and running again: its next end tells
		return o.jobs.WebhooksEnqueued(ctx, id)
	}
	seen := map[string]bool{}
	for _, e := range o.reg.byTenant[j.Tenant] {
		if e.wants(typ) && !seen[e.URL] {
			seen[e.URL] = true
			if err := o.enqueue(ctx, j, sp, typ, e.URL, e.IncludeResult); err != nil {
				return err
			}
		}
	}
	if sp.URL != "" && !seen[sp.URL] {
		if err := o.enqueue(ctx, j, sp, typ, sp.URL, false); err != nil {
			return err
		}
	}
	return o.jobs.WebhooksEnqueued(ctx, id)
}

func (o *Outbox) enqueue(ctx context.Context, j store.Job, sp Spec, typ, url string, includeResult bool) error {
	b, err := body(j, sp, typ, includeResult)
	if err != nil {
		return err
	}
	return o.enqueuePayload(ctx, tasks.WebhookPayload{ID: eventID(j), Type: typ, Tenant: j.Tenant, JobID: j.ID, URL: url, Target: target(url),
		CreatedAt: j.FinishedAt, Body: b})
}

// enqueuePayload enqueues one delivery, once.
func (o *Outbox) enqueuePayload(ctx context.Context, p tasks.WebhookPayload) error {
	payload, err := tasks.EncodeWebhook(p)
	if err != nil {
		return err
	}
	_, err = o.q.EnqueueContext(ctx, asynq.NewTask(tasks.TypeWebhook, payload), asynq.Queue(tasks.QueueWebhooks),
		asynq.TaskID(p.ID+":"+p.Target), asynq.MaxRetry(maxRetry), asynq.Retention(retention))
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil // enqueued before
	}
	if err != nil {
		return fmt.Errorf("enqueue webhook: %w: %w", store.ErrUnavailable, err)
	}
	return record(ctx, o.jobs, p, Delivery{State: StatePending})
}

// Notify is jobs.Options.Notify: the deliveries of a job that just ended go
// out now; when they cannot, the sweep enqueues them.
func (o *Outbox) Notify(ctx context.Context, id string) {
	if err := o.Flush(context.WithoutCancel(ctx), id); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("job_id", id).Msg("could not enqueue the job's webhooks; the sweep will")
	}
}

// Sweep enqueues, every interval until ctx ends, the deliveries of jobs that
// stayed in the outbox past store.OutboxDelay (their process died, or Redis
// was away when they ended).
func (o *Outbox) Sweep(ctx context.Context, interval time.Duration, log zerolog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids, err := o.jobs.ClaimWebhooks(ctx, 100, 30*time.Second)
		if err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Msg("webhook sweep")
		}
		for _, id := range ids {
			if err := o.Flush(ctx, id); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Str("job_id", id).Msg("could not enqueue the job's webhooks; the sweep tries again")
			}
		}
	}
}
