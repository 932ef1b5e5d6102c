package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// The record types a running attempt reads and writes. The pipeline names
// them through this package, the job lifecycle's one door.
type (
	Outcome  = store.Outcome
	Result   = store.Result
	Usage    = store.Usage
	Message  = store.Message
	JobError = store.JobError
	Spent    = store.Spent
)

// Statuses a job ends in.
const (
	StatusSucceeded = store.StatusSucceeded
	StatusFailed    = store.StatusFailed
	StatusCanceled  = store.StatusCanceled
	StatusRetrying  = store.StatusRetrying
)

var (
	// ErrNothingToRun: the task has nothing to run (the job finished, another
	// task runs it, its record is gone, or it is not the session's turn yet).
	// Not a failure: the task is done with.
	ErrNothingToRun = errors.New("nothing to run")
	// ErrJobFinished and ErrSuperseded end an attempt's writes: the job was
	// canceled (or finished), or a later attempt owns it.
	ErrJobFinished = store.ErrJobFinished
	ErrSuperseded  = store.ErrSuperseded
	// ErrChainGone: a response of the Responses chain that the job continues
	// has expired or was deleted since the job was submitted.
	ErrChainGone = store.ErrResponseGone
)

// finishTimeout bounds recording an outcome. It runs on a context detached
// from the task's, so that a reply already paid for is recorded even when
// shutdown cancels the task just after the provider answered.
const finishTimeout = 5 * time.Second

// Attempt is one run of a job in this process. Its methods are the job's only
// transitions while it runs; each names the attempt's fence token, so an
// attempt that lost the job (taken over, canceled) changes nothing.
type Attempt struct {
	m     *Manager
	job   tasks.ChatPayload
	N     int // the attempt's number (retries are decided on it)
	Fence int // larger than any earlier attempt's
	// History is the session's conversation (for a jobs-API turn), or nil
	// with BadHistory set when it could not be decoded.
	History    []Message
	BadHistory error
	// TurnAt is when an earlier job of the session gave this one its turn
	// (zero when it never waited for one).
	TurnAt time.Time
	// Followed: a client asked for the job's tokens live before this attempt began.
	Followed bool
	// Logged is how many events the job's log holds before this attempt's
	// first: its events go to the seqs after it (stream.Emitter.Starts);
	// -1 when not known.
	Logged int64
	lease  string
}

// Start begins an attempt of the job a task carries: it marks the job
// active, takes the attempt's lease (renewed by RenewLeases until the
// attempt ends) and reads the session's history, in one round trip. An
// attempt after an interrupted one first tells followers to discard what
// the interrupted one streamed. ErrNothingToRun says why there is nothing to
// run. Close the attempt when it is done with.
func (m *Manager) Start(ctx context.Context, job tasks.ChatPayload, task string) (*Attempt, error) {
	withHistory := len(job.Messages) == 0
	sa, err := m.st.StartAttempt(ctx, job.JobID, job.Tenant, job.SessionID, task, tasks.RetryTaskID(job.JobID), withHistory, m.opt.Lease)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Expired or lost before it ran: its place in the order goes.
		next, rerr := m.st.Release(ctx, job.Tenant, job.SessionID, job.JobID)
		if rerr == nil {
			m.dispatch(ctx, next)
		}
		return nil, fmt.Errorf("%w: the job's record is gone (expired or lost)", ErrNothingToRun)
	case err != nil:
		return nil, err
	case sa.Head != "":
		return nil, fmt.Errorf("%w: an earlier job of the session (%s) holds the turn; the job waits for it", ErrNothingToRun, sa.Head)
	case sa.N == 0:
		return nil, fmt.Errorf("%w: the job has finished or another task runs it", ErrNothingToRun)
	}
	a := &Attempt{m: m, job: job, N: sa.N, Fence: sa.Fence, History: sa.History, BadHistory: sa.BadHistory, TurnAt: sa.TurnAt, Followed: sa.Followed, Logged: sa.Logged}
	a.lease = m.leases.add(job.JobID, sa.Fence)
	if sa.N > 1 {
		a.retractInterrupted(ctx)
	}
	return a, nil
}

// WithBody completes a payload whose task carries the body by reference
// (tasks.ChatPayload.Body) with the body its record keeps. ErrNothingToRun
// when the job has finished; an unfinished job without its body is a bad
// payload (it fails).
func (m *Manager) WithBody(ctx context.Context, pl tasks.ChatPayload) (tasks.ChatPayload, error) {
	raw, err := m.st.Body(ctx, pl.JobID)
	if err != nil {
		return pl, err
	}
	if raw == nil {
		if j, err := m.st.Get(ctx, pl.JobID); errors.Is(err, store.ErrNotFound) || (err == nil && store.Terminal(j.Status)) {
			return pl, fmt.Errorf("%w: the job's body is gone (it has finished)", ErrNothingToRun)
		} else if err != nil {
			return pl, err
		}
		// Unfinished without its body: no attempt can run it.
		return pl, fmt.Errorf("%w: the job's record holds no body", tasks.ErrBadPayload)
	}
	full, err := tasks.DecodeChat(raw)
	if err != nil {
		return pl, fmt.Errorf("the job's body: %w", err)
	}
	return pl.WithBody(full), nil
}

// Chain reads the Responses chain that the job's conversation continues
// (the payload's Chain), oldest message first. ErrChainGone when a response
// of it is gone: no retry brings it back.
func (a *Attempt) Chain(ctx context.Context) ([]tasks.ChatMessage, error) {
	msgs, err := a.m.st.ResponseChain(ctx, a.job.Chain.Previous, a.job.Tenant)
	if errors.Is(err, store.ErrResponseUnfinished) {
		// Checked at submit, and an answer is never taken back: only a
		// record rewritten since can say so.
		return nil, fmt.Errorf("%w: %w", ErrChainGone, err)
	}
	return msgs, err
}

// Close ends this process's part in the attempt: its lease is no longer renewed.
func (a *Attempt) Close() { a.m.leases.remove(a.lease) }

// Finish records the job's outcome once (fenced), appends its final event and
// hands the session's turn to its next job. first: this call finished it.
func (a *Attempt) Finish(ctx context.Context, o Outcome) (first bool, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	o.Spent = a.priced(o.Spent)
	return a.m.finish(ctx, a.job.JobID, a.job.Tenant, a.job.SessionID, a.Fence, o)
}

// Retry records a failed attempt that the queue retries no later than until,
// and counts what its call used (nil: nothing known).
func (a *Attempt) Retry(ctx context.Context, why JobError, until time.Time, spent *Spent) error {
	return a.m.st.MarkRetrying(ctx, a.job.JobID, a.job.Tenant, a.job.SessionID, a.Fence, why, until, a.priced(spent))
}

// CountSpent counts what the attempt's call used when nothing else is
// recorded of the attempt (canceled, taken over, cut by a shutdown).
func (a *Attempt) CountSpent(ctx context.Context, spent *Spent) {
	if spent == nil {
		return
	}
	if err := a.m.st.CountSpent(context.WithoutCancel(ctx), a.job.JobID, a.job.Tenant, a.priced(spent)); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("could not count what the provider call used")
	}
}

// priced names the model a failed call's use is counted under (the job's,
// else the default) and prices it against the tenant's budget.
func (a *Attempt) priced(sp *Spent) *Spent {
	if sp == nil {
		return nil
	}
	out := *sp
	out.Model = cmp.Or(out.Model, a.job.Model, a.m.defaultModel())
	if b, ok := a.m.opt.Budgets[a.job.Tenant]; ok {
		out.BudgetCost = b.cost(out.Model, out.Prompt, out.Completion, a.m.prices())
	}
	return &out
}

// Defer hands back an attempt that never reached a provider: the job waits
// in the queue until `until`, its attempt not counted.
func (a *Attempt) Defer(ctx context.Context, until time.Time) error {
	return a.m.st.MarkDeferred(ctx, a.job.JobID, a.job.Tenant, a.job.SessionID, a.Fence, until)
}

// GiveBack hands back an attempt whose model found no capacity: the job goes
// back to the front of its queue in the scheduler, under a new task id, and
// no job of its model is handed out before `until`, then one about every
// `every` (how often the model's quota lets a call through; zero: not known)
// until it is open again. The task that ran this attempt is done with.
func (a *Attempt) GiveBack(ctx context.Context, until time.Time, every time.Duration) error {
	ok, err := a.m.st.MarkGivenBack(ctx, a.job.JobID, a.job.Tenant, a.job.SessionID, a.Fence, tasks.RetryTaskID(a.job.JobID))
	if err != nil || !ok {
		return err // not ok: canceled or taken over meanwhile, nothing to give back
	}
	j := store.Scheduled{ID: a.job.JobID, Lane: tasks.PriorityOfQueue(tasks.QueueName(cmp.Or(a.job.Priority, tasks.PriorityNormal))),
		Tenant: a.job.Tenant, Session: a.job.SessionID, Model: a.m.modelOf(a.job.Model), At: a.job.SubmittedAt, Weight: a.m.weight(a.job.Tenant)}
	if err := a.m.st.GiveBack(ctx, j, until, every); err != nil {
		// Queued, in no queue: the reconciler schedules it again.
		zerolog.Ctx(ctx).Warn().Err(err).Msg("could not give the job back to the scheduler; the reconciler will")
	}
	return nil
}

// Abandon hands over an attempt cut short by a shutdown: its lease expires
// now, so a rescuer takes the job over at once.
func (a *Attempt) Abandon(ctx context.Context) error {
	return a.m.st.Abandon(ctx, a.job.JobID, a.Fence)
}

// AppendEvent adds the n-th of this attempt's events to the job's log
// (stream.Emitter's sink); sent again with the same n, it is not made twice.
func (a *Attempt) AppendEvent(ctx context.Context, n int64, p store.Payload) (store.Appended, error) {
	return a.m.st.AppendEvent(ctx, a.job.JobID, a.Fence, n, p)
}

// PublishAhead sends one of this attempt's events live, ahead of the log,
// at the seq it will have there (stream.Emitter's live path).
func (a *Attempt) PublishAhead(ctx context.Context, base, seq int64, entry string, first bool) (int64, error) {
	return a.m.st.PublishAhead(ctx, a.job.JobID, a.Fence, base, seq, entry, first)
}

// SyncEvents writes this attempt's events that the log does not hold yet,
// numbered from seq `from` (stream.Emitter's log path).
func (a *Attempt) SyncEvents(ctx context.Context, from int64, entries []string, live bool) (int64, error) {
	return a.m.st.SyncEvents(ctx, a.job.JobID, a.Fence, from, entries, live)
}

// AnnounceRetry tells followers to discard this attempt's output: attempt
// next follows. Not numbered: a retry event made twice means the same.
func (a *Attempt) AnnounceRetry(ctx context.Context, next int, reason string) error {
	ap, err := a.AppendEvent(ctx, 0, store.RetryEvent{Attempt: next, Reason: reason})
	if err == nil {
		a.Logged = ap.Seq
	}
	return err
}

// Status is the job's status as it stands (after an attempt's writes were refused).
func (a *Attempt) Status(ctx context.Context) (string, error) {
	j, err := a.m.st.Get(ctx, a.job.JobID)
	return j.Status, err
}

// retractInterrupted announces a retry for an attempt that died with its
// worker after streaming: its output must be discarded before this
// attempt's arrives.
func (a *Attempt) retractInterrupted(ctx context.Context) {
	last, ok, err := a.m.st.LastEvent(ctx, a.job.JobID)
	if err == nil && ok && (last.Type == store.EventToken || last.Type == store.EventToolCall) {
		err = a.AnnounceRetry(ctx, a.N, "the previous attempt was interrupted")
	}
	if err != nil {
		a.Logged = -1 // the retry may be in the log or not: the first append tells
		zerolog.Ctx(ctx).Warn().Err(err).Str("job_id", a.job.JobID).Msg("could not retract the interrupted attempt's output")
	}
}

// Hold keeps a job that waits in the queue without an attempt (deferred
// before it started) alive past until.
func (m *Manager) Hold(ctx context.Context, job tasks.ChatPayload, until time.Time) error {
	return m.st.Hold(ctx, job.JobID, job.Tenant, job.SessionID, until)
}

// FailUndecodable records a task whose payload no retry can fix as a failed
// job: the job the task id names (a takeover's task id names it too).
func (m *Manager) FailUndecodable(ctx context.Context, task string, cause error) {
	id := tasks.JobOfTask(task)
	j, err := m.st.Get(ctx, id)
	if err != nil {
		return // no record to update; the task is archived with the error
	}
	_, _ = m.finish(ctx, id, j.Tenant, j.SessionID, 0, Outcome{
		Status: StatusFailed, Error: &JobError{Code: "bad_payload", Message: cause.Error()},
	})
}
