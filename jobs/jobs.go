// Package jobs owns the lifecycle of a chat job: submit (with idempotent
// replay), read and wait, cancel, re-run and reconcile. Every front door (the
// jobs API, the OpenAI-compatible routes, the worker's `jobs` commands) goes
// through it; none of them touches asynq. The worker's pipeline runs a job
// through an Attempt (attempt.go), whose methods are the job's transitions.
// Where each part lives: submit, read and wait here; cancel.go; order.go (a
// session's turns, handed on); dispatch.go (who runs next: the scheduler and
// the workers' dispatchers); leases.go; supervise.go (the rescuer and the
// reconciler's loop); reconcile.go (repairing one job); archived.go (the dead
// letters and their re-run); followed.go and webhooks.go (the writes the
// stream hub and the webhook outbox ask for: only this package writes job
// state).
package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"go.opentelemetry.io/otel/trace"

	"github.com/chatfleet/chatfleet/internal/tracing"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

var (
	// ErrConflict: an Idempotency-Key was reused with another request body.
	ErrConflict = errors.New("idempotency key reused with a different request")
	// ErrFinished: the job has already finished (cancel of a finished job).
	ErrFinished = errors.New("job already finished")
	// ErrNotArchived: a re-run of a job that asynq has not given up on.
	ErrNotArchived = errors.New("job is not archived")
)

// Options configures the lifecycle.
type Options struct {
	MaxRetries int // attempts after the first, per job
	// OrphanAfter is how old a queued record must be, with no task behind it,
	// before it is taken as lost (its enqueue failed) and failed. Default 30 s,
	// well past the submit deadline.
	OrphanAfter time.Duration
	// QueueSpread spreads each priority over this many queues (tasks.SpreadQueue).
	QueueSpread int
	// Lease is a running attempt's heartbeat lease (default 5s): renewed
	// every third of it, taken over once it expires.
	Lease time.Duration
	// Notify is called after a job with webhooks ended, to enqueue its
	// deliveries now; the job sits in the outbox until then, and a sweep
	// enqueues what this did not (webhooks.Outbox).
	Notify func(ctx context.Context, id string)
	// Budgets are the tenants' spending limits; Prices (dollars per million
	// input and output tokens, by model; read at each use: an edit of the
	// models file changes them) price a dollar budget.
	Budgets map[string]Budget
	Prices  func() map[string][2]float64
	// DefaultModel is the model a job that names none asks for: a dollar
	// budget prices its estimate by it, and the scheduler holds it under it.
	DefaultModel func() string
	// TenantWeights are the tenants' shares of the fleet while several have
	// work (CHATFLEET_TENANT_WEIGHTS); a tenant not listed has weight 1.
	TenantWeights map[string]float64
}

// prices are the prices in force (none when not configured).
func (m *Manager) prices() map[string][2]float64 {
	if m.opt.Prices == nil {
		return nil
	}
	return m.opt.Prices()
}

// defaultModel is the model a job that names none asks for.
func (m *Manager) defaultModel() string {
	if m.opt.DefaultModel == nil {
		return ""
	}
	return m.opt.DefaultModel()
}

// Manager runs the job lifecycle over the store and asynq.
type Manager struct {
	st    *store.Store
	queue *asynq.Client
	insp  *asynq.Inspector
	opt   Options

	leases leaseSet // the attempts running in this process

	// The rescuer's last round that reached Redis, and until when it
	// trusts no lease (after a stall).
	rescueMu       sync.Mutex
	rescued, grace time.Time
}

// New returns a Manager. It does not close the asynq client or inspector.
func New(st *store.Store, queue *asynq.Client, insp *asynq.Inspector, opt Options) *Manager {
	if opt.OrphanAfter <= 0 {
		opt.OrphanAfter = 30 * time.Second
	}
	if opt.Lease <= 0 {
		opt.Lease = 5 * time.Second
	}
	return &Manager{st: st, queue: queue, insp: insp, opt: opt}
}

// submitTimeout bounds the Redis work of one submit.
const submitTimeout = 5 * time.Second

// Submitted is the job a Submit created or found.
type Submitted struct {
	Job      store.Job
	Replayed bool // the id existed (same Idempotency-Key and body): no new job
}

// Submit records a job and enqueues its task, or leaves it to wait for its
// session's turn when an earlier job of the session is unfinished. When the id exists (a repeated
// Idempotency-Key) it returns that job with Replayed set, or ErrConflict if the
// request differs. It errs with store.ErrTooManyJobs when the tenant is at its
// limit and store.ErrUnavailable when Redis is unreachable; then nothing of
// the job is left behind.
//
// A caller that has found Redis hung stops a submit under way by cancelling
// ctx with a cause that wraps store.ErrUnavailable; any other cancellation
// (the client hung up) is not heeded. A submit stopped after its record was
// written undoes it in the background as Redis answers again (see undo).
func (m *Manager) Submit(ctx context.Context, nj store.NewJob, p tasks.ChatPayload) (Submitted, error) {
	// Record, enqueue and undo run to the end even if the caller hangs up
	// half-way, so that no record is left without its task.
	caller := ctx
	detached, stop := context.WithCancelCause(context.WithoutCancel(caller))
	defer stop(nil)
	stopIfUnavailable := func() {
		if cause := context.Cause(caller); errors.Is(cause, store.ErrUnavailable) {
			stop(cause)
		}
	}
	defer context.AfterFunc(caller, stopIfUnavailable)()
	stopIfUnavailable() // AfterFunc runs later, in a goroutine, if caller is done already
	ctx, cancel := context.WithTimeout(detached, submitTimeout)
	defer cancel()
	period, reserved, err := m.reserve(ctx, nj, p)
	if err != nil {
		// A request sent again under its Idempotency-Key gets the job it
		// made, budget or not: nothing new would be spent.
		if nj.KeyHash == "" {
			return Submitted{}, err
		}
		if existing, gerr := m.st.Get(ctx, nj.ID); gerr == nil && existing.Tenant == nj.Tenant && existing.BodyHash == nj.BodyHash {
			return Submitted{Job: existing, Replayed: true}, nil
		}
		return Submitted{}, err
	}
	nj.BudgetPeriod = period
	written := false // the record was written: its end settles the reservation
	if reserved {
		defer func() {
			if !written {
				m.unreserve(ctx, nj)
			}
		}()
	}
	nj.Queue = tasks.SpreadQueue(nj.Queue, nj.ID, m.opt.QueueSpread)
	if tracing.Enabled() {
		// The job's trace: this span is the parent of every attempt's, and
		// its context travels in the payload.
		var span trace.Span
		ctx, span = tracing.Tracer().Start(ctx, "send "+nj.Queue, trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(tracing.Messaging(nj.Queue, nj.ID)...))
		defer span.End()
		p.Trace = tracing.Inject(ctx)
		nj.TraceID, _ = tracing.IDs(ctx)
	}
	raw, err := p.Encode()
	if err != nil {
		return Submitted{}, err
	}
	nj.Payload = raw
	if len(raw) > tasks.BodyByReference {
		// A large body is kept once, in the record; the task names it.
		if nj.Payload, err = p.Lean().Encode(); err != nil {
			return Submitted{}, err
		}
		nj.Body = raw
	}
	nj.Model = m.modelOf(p.Model)
	// The record and, when the job holds its session's turn, its place in
	// the scheduler: in one script on one Redis, one after the other on a
	// cluster (another slot). A job behind an earlier one of its session
	// waits for its turn.
	nj.Schedule = m.scheduled(nj.ID, nj.Tenant, nj.SessionID, nj.Queue, nj.Model, nj.CreatedAt)
	c, existing, err := m.st.Create(ctx, nj)
	if errors.Is(err, store.ErrKeyReused) {
		return Submitted{}, ErrConflict
	}
	if err != nil {
		return Submitted{}, err
	}
	if c.New && !c.Waiting && !c.Scheduled {
		if err := m.schedule(ctx, nj.ID, nj.Tenant, nj.SessionID, nj.Queue, nj.Model, nj.CreatedAt); err != nil {
			written = true // the undo gives the reservation back with the record
			if stopped := context.Cause(detached); stopped != nil {
				go m.undo(context.WithoutCancel(ctx), nj)
				return Submitted{}, fmt.Errorf("%w: %w", stopped, err)
			}
			return Submitted{}, errors.Join(err, m.undo(ctx, nj))
		}
	}
	if c.New {
		written = true
		return Submitted{Job: store.Job{ID: nj.ID, Tenant: nj.Tenant, SessionID: nj.SessionID, Queue: nj.Queue, Task: nj.ID,
			Status: store.StatusQueued, BodyHash: nj.BodyHash, CreatedAt: nj.CreatedAt}}, nil
	}
	if existing.Tenant != nj.Tenant || existing.BodyHash != nj.BodyHash {
		return Submitted{}, ErrConflict
	}
	if existing.Status == store.StatusQueued && existing.Task == existing.ID {
		// Make sure the first request's schedule happened, if it is the
		// job's turn and it has not been handed out yet.
		if err := m.ensureScheduled(ctx, existing); err != nil {
			return Submitted{}, err
		}
	}
	return Submitted{Job: existing, Replayed: true}, nil
}

// undo deletes the record of a job whose enqueue failed. When it fails too
// (Redis still does not answer within the submit's deadline) the record is
// left without a task: the reconciler enqueues it again, from the payload the
// record keeps, once it is OrphanAfter old, so the job is run, not lost.
func (m *Manager) undo(ctx context.Context, nj store.NewJob) error {
	ctx, cancel := context.WithTimeout(ctx, submitTimeout)
	defer cancel()
	next, err := m.st.Delete(ctx, nj)
	if err != nil {
		return fmt.Errorf("undo job record: %w", err)
	}
	if nj.BudgetPeriod != "" {
		m.unreserve(ctx, nj)
	}
	m.dispatch(ctx, next) // a job submitted behind it meanwhile
	return nil
}

// enqueueTask enqueues a queued job's task. A task of the same id may be
// left from an earlier job whose record was lost (an Idempotency-Key sent
// again): if that task is finished (archived, or completed under a release
// that kept completed tasks), the job runs under a new task id instead.
func (m *Manager) enqueueTask(ctx context.Context, id, task, queue string, payload []byte) error {
	return m.enqueueAs(ctx, id, task, queue, func(task string) *asynq.Task {
		return tasks.ChatTask(payload, task, queue, m.opt.MaxRetries, nil)
	})
}

// HandBack enqueues the task of a job that ran in a worker without one
// (orchestration/direct.go) and has not ended: asynq runs it after `in`;
// headers are the task's (the attempt's error, for asynq to act on).
func (m *Manager) HandBack(ctx context.Context, id, task, queue string, payload []byte, in time.Duration, headers map[string]string) error {
	return m.enqueueAs(ctx, id, task, queue, func(task string) *asynq.Task {
		return tasks.ChatTask(payload, task, queue, m.opt.MaxRetries, headers, asynq.ProcessIn(in))
	})
}

// enqueueAs enqueues the task build makes under the job's task id, or under
// a new one when a finished task holds that id (enqueueTask).
func (m *Manager) enqueueAs(ctx context.Context, id, task, queue string, build func(task string) *asynq.Task) error {
	err := m.enqueueRaw(ctx, build(task))
	if !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	info, ierr := m.insp.GetTaskInfo(queue, task)
	if ierr != nil || (info.State != asynq.TaskStateCompleted && info.State != asynq.TaskStateArchived) {
		return nil // the waiting task runs the record
	}
	task = tasks.RetryTaskID(id)
	if ok, err := m.st.Retask(ctx, id, task); err != nil || !ok {
		return err
	}
	if err := m.enqueueRaw(ctx, build(task)); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	return nil
}

// requeue runs a queued job under a new task id (its task is gone or done),
// through the scheduler.
func (m *Manager) requeue(ctx context.Context, j store.Job) error {
	if ok, err := m.st.Retask(ctx, j.ID, tasks.RetryTaskID(j.ID)); err != nil || !ok {
		return err
	}
	return m.schedule(ctx, j.ID, j.Tenant, j.SessionID, j.Queue, j.Model, j.CreatedAt)
}

// ensureScheduled schedules a queued job that holds its session's turn and
// is neither in the scheduler nor handed out to asynq (its schedule was
// lost). Scheduling it twice is harmless: the scheduler keeps one entry, and
// a second hand-out finds the task (asynq refuses a second task with its id)
// or the job started.
func (m *Manager) ensureScheduled(ctx context.Context, j store.Job) error {
	head, err := m.st.SessionHead(ctx, j.Tenant, j.SessionID)
	if err != nil || head != j.ID {
		return err
	}
	if in, err := m.st.IsScheduled(ctx, j.ID); err != nil || in {
		return err
	}
	if _, err := m.insp.GetTaskInfo(j.Queue, j.Task); err == nil {
		return nil
	} else if !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
		return fmt.Errorf("inspect task: %w: %w", store.ErrUnavailable, err)
	}
	return m.schedule(ctx, j.ID, j.Tenant, j.SessionID, j.Queue, j.Model, j.CreatedAt)
}

// enqueueRaw enqueues t, telling a task id conflict apart.
func (m *Manager) enqueueRaw(ctx context.Context, t *asynq.Task) error {
	_, err := m.queue.EnqueueContext(ctx, t)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("enqueue: %w: %w", store.ErrUnavailable, err)
	}
	return err
}

func (m *Manager) enqueue(ctx context.Context, payload []byte, taskID, queue string) error {
	_, err := m.queue.EnqueueContext(ctx, tasks.ChatTask(payload, taskID, queue, m.opt.MaxRetries, nil))
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("enqueue: %w: %w", store.ErrUnavailable, err)
	}
	return nil
}

// Get returns a tenant's job as it stands (a read changes nothing: repairs
// are the reconciler's); another tenant's job and a malformed id are
// store.ErrNotFound.
func (m *Manager) Get(ctx context.Context, id, tenant string) (store.Job, error) {
	if !tasks.ValidJobID(id) {
		return store.Job{}, store.ErrNotFound
	}
	j, err := m.st.Get(ctx, id)
	if err == nil && j.Tenant != tenant {
		return store.Job{}, store.ErrNotFound
	}
	return j, err
}

// Wait returns the job once it has finished, or as it stands when wait has
// passed or ctx ends. It polls the record, backing off from 10 ms to 250 ms.
func (m *Manager) Wait(ctx context.Context, j store.Job, wait time.Duration) (store.Job, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	backoff := 10 * time.Millisecond
	for !store.Terminal(j.Status) {
		select {
		case <-ctx.Done():
			return j, nil
		case <-timer.C:
			return j, nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 250*time.Millisecond)
		next, err := m.st.Get(ctx, j.ID)
		if err != nil {
			return j, err
		}
		j = next
	}
	return j, nil
}
