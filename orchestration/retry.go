package orchestration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/tasks"
)

// What a failed or deferred attempt comes to: a retry (spaced exponentially,
// or as the provider asked), a deferral (no attempt used), or the job's
// failure with a public error.

// errDeferred parks a job while every provider's breaker is open (mode
// defer), or while its payload is of a newer version than this worker reads.
// Not a failure: asynq runs it again when the deferral ends, without
// counting a retry.
type errDeferred struct {
	until time.Time
	cause error // nil: every provider is open
}

func (e *errDeferred) Error() string {
	why := "every provider is open"
	if e.cause != nil {
		why = e.cause.Error()
	}
	return why + "; job deferred until " + e.until.UTC().Format(time.RFC3339)
}

func (e *errDeferred) Unwrap() error { return e.cause }

// newerPayloadWait is how long a task of a newer payload version waits
// before a worker tries it again: after a rollback, until a worker of the
// release that wrote it takes it (capped by MaxRetryDelay).
const newerPayloadWait = time.Minute

// deferJob hands the attempt back and parks the job in the queue until
// `until` (capped), keeping its record alive past then.
func (p *Pipeline) deferJob(ctx context.Context, att *jobs.Attempt, until time.Time) error {
	until = p.capDelay(until)
	if err := att.Defer(ctx, until); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("could not hand back the attempt")
	}
	return &errDeferred{until: until}
}

func (p *Pipeline) capDelay(until time.Time) time.Time {
	return minTime(until, time.Now().Add(p.opt.MaxRetryDelay))
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// failAttempt decides between retry and failure for a failed provider call.
// spent is what the failed call used (nil: nothing known), counted whatever
// comes of the attempt.
func (p *Pipeline) failAttempt(ctx context.Context, pl tasks.ChatPayload, att *jobs.Attempt, emitted bool, callErr error, spent *jobs.Spent) error {
	log := zerolog.Ctx(ctx)
	if errors.Is(callErr, jobs.ErrJobFinished) || errors.Is(callErr, jobs.ErrSuperseded) || ctx.Err() != nil {
		// Canceled, taken over or cut by a shutdown: nothing more of this
		// attempt is recorded, but its call was billed.
		att.CountSpent(ctx, spent)
		status, err := att.Status(context.WithoutCancel(ctx))
		if err == nil && status == jobs.StatusCanceled {
			log.Info().Str("status", jobs.StatusCanceled).Msg("job canceled; provider call aborted")
			p.m.jobs.WithLabelValues(jobs.StatusCanceled).Inc()
			return nil
		}
		if errors.Is(callErr, jobs.ErrSuperseded) || (err == nil && (status == jobs.StatusSucceeded || status == jobs.StatusFailed)) {
			// Another worker took the job over while this attempt was
			// stalled (and may have finished it): this one stops here and
			// writes nothing more.
			log.Warn().Str("status", status).Msg("attempt superseded: the job was taken over; stopping")
			return nil
		}
	}
	if ctx.Err() != nil {
		// The worker is shutting down: the job is handed over at once (its
		// lease expires now) and asynq hands the task back too.
		if err := att.Abandon(context.WithoutCancel(ctx)); err != nil {
			log.Warn().Err(err).Msg("could not hand over the interrupted job")
		}
		log.Warn().Err(callErr).Msg("job interrupted by shutdown; handed over")
		return callErr
	}
	var allDown *llm.AllDownError
	isAllDown := errors.As(callErr, &allDown)
	retryable := isAllDown || llm.Retryable(callErr)
	jerr := p.publicError(callErr)
	if isAllDown && pl.Params.Structured() {
		jerr.Message += "; a request with tools or a response format gets no degraded reply"
	}
	if retryable && att.N < p.maxAttempts() && !(allDown != nil && allDown.AllOpen) {
		until := time.Now().Add(p.opt.MaxRetryDelay) // no retry waits longer
		// The retry event goes out while the attempt still owns the job.
		if emitted {
			p.announceRetry(ctx, att, att.N+1, jerr.Message)
		}
		if err := att.Retry(ctx, jerr, until, spent); err != nil {
			log.Warn().Err(err).Msg("could not record retrying status")
		}
		log.Warn().Err(callErr).Str("status", jobs.StatusRetrying).Msg("attempt failed; will retry")
		return callErr
	}
	first, err := att.Finish(ctx, jobs.Outcome{Status: jobs.StatusFailed, Error: &jerr, Spent: spent})
	if err != nil {
		return err // retried by asynq; Finish applies once
	}
	if first {
		p.m.jobs.WithLabelValues(jobs.StatusFailed).Inc()
	}
	log.Error().Err(callErr).Str("status", jobs.StatusFailed).Msg("job failed")
	return fmt.Errorf("%w: %w", callErr, asynq.SkipRetry)
}

// publicError is what tenants see of a failed call: a stable code and a
// message that names no upstream address, body or internal detail (those go
// to the logs with the full error). The one exception is the upstream's own
// JSON message when it rejected the request itself (400, 413, 422): it tells
// the caller what to change (a prompt over the context length).
func (p *Pipeline) publicError(err error) jobs.JobError {
	var allDown *llm.AllDownError
	var pe *llm.Error
	var unknown *llm.UnknownModelError
	switch {
	case errors.As(err, &unknown):
		return jobs.JobError{Code: "model_not_found", Message: unknown.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return jobs.JobError{Code: "timeout", Message: fmt.Sprintf("the provider did not finish within %s", p.opt.CallTimeout)}
	case errors.As(err, &pe) && pe.Timeout && (!errors.As(err, &allDown) || len(allDown.Errs) == 1):
		return jobs.JobError{Code: "timeout", Message: "the provider timed out: " + pe.Msg}
	case errors.As(err, &allDown):
		return jobs.JobError{Code: "providers_unavailable", Message: "every provider failed"}
	case errors.As(err, &pe) && pe.Status != 0 && !pe.Retryable:
		msg := fmt.Sprintf("the provider rejected the request (HTTP %d)", pe.Status)
		if pe.RequestFault != "" {
			msg += ": " + pe.RequestFault
		}
		return jobs.JobError{Code: "provider_rejected", Message: msg}
	case errors.As(err, &pe) && pe.Status != 0:
		return jobs.JobError{Code: "provider_error", Message: fmt.Sprintf("the provider failed (HTTP %d)", pe.Status)}
	}
	return jobs.JobError{Code: "provider_error", Message: "the provider could not be reached or broke off its answer"}
}

// announceRetry tells followers to discard the output of a failed attempt;
// next is the number of the attempt that follows.
func (p *Pipeline) announceRetry(ctx context.Context, att *jobs.Attempt, next int, reason string) {
	if err := att.AnnounceRetry(ctx, next, reason); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("could not publish the retry event")
	}
}

// retryDelay (capped by MaxRetryDelay) spaces real retries exponentially
// with jitter; a deferred job comes back when its deferral ends.
func (p *Pipeline) retryDelay(n int, err error, t *asynq.Task) time.Duration {
	return min(retryDelay(n, err, t), p.opt.MaxRetryDelay)
}

func retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if r := (*replayed)(nil); errors.As(err, &r) {
		return r.delay // the attempt's own, computed when it ran here
	}
	var deferred *errDeferred
	if errors.As(err, &deferred) {
		return max(time.Until(deferred.until), 0) + time.Duration(rand.Int64N(int64(250*time.Millisecond)))
	}
	if !isFailure(err) {
		return 10 * time.Millisecond // a cancel: its next run ends at once
	}
	d := time.Second << min(n, 6) // 1s, 2s, 4s … 64s
	d = d/2 + time.Duration(float64(d/2)*rand.Float64())
	var pe *llm.Error
	if errors.As(err, &pe) && pe.RetryAfter > d {
		d = pe.RetryAfter // the upstream asked for more patience
	}
	return d
}

// isFailure tells asynq which errors count against a job's retries: not a
// deferral, and not a cancel (asynq reports a canceled task as failed with
// context.Canceled; its next run sees the canceled record and ends at once).
func isFailure(err error) bool {
	var deferred *errDeferred
	return !errors.Is(err, context.Canceled) && !errors.As(err, &deferred)
}
