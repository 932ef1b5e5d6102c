// Package orchestration runs chat jobs: the asynq worker and the pipeline each
// job goes through (turn → history → prompt → provider → result → history).
package orchestration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
)

// errNotYourTurn hands a job back to the queue because an earlier job of its
// session is unfinished. It is not a failure: asynq retries it without counting.
var errNotYourTurn = errors.New("an earlier job of the session is unfinished")

// Pipeline is the asynq handler of chat:complete tasks.
type Pipeline struct {
	store       *store.Store
	provider    llm.Provider
	log         zerolog.Logger
	coalescing  stream.Coalescing
	maxAttempts int           // 1 + CHATFLEET_MAX_RETRIES
	timeout     time.Duration // one provider call
	budget      int           // prompt tokens
	turnWait    time.Duration // how long a job waits in place for its session's turn
}

// NewPipeline returns the handler. maxRetries is the number of attempts after
// the first; attempts are counted in the job record, so an attempt cut short by
// a crash counts too, and a job that crashes its worker every time still ends.
func NewPipeline(st *store.Store, p llm.Provider, log zerolog.Logger, maxRetries int, callTimeout time.Duration, c stream.Coalescing) *Pipeline {
	return &Pipeline{store: st, provider: p, log: log, coalescing: c, maxAttempts: maxRetries + 1,
		timeout: callTimeout, budget: 6000, turnWait: 2 * time.Second}
}

// finishTimeout bounds recording an outcome. It runs on a context detached from
// the task's, so that a reply already paid for is recorded even when shutdown
// cancels the task just after the provider answered.
const finishTimeout = 5 * time.Second

func (p *Pipeline) finish(ctx context.Context, pl tasks.ChatPayload, o store.Outcome) (bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishTimeout)
	defer cancel()
	return p.store.Finish(ctx, pl.JobID, pl.Tenant, pl.SessionID, o)
}

// ProcessTask implements asynq.Handler.
func (p *Pipeline) ProcessTask(ctx context.Context, t *asynq.Task) error {
	taskID, _ := asynq.GetTaskID(ctx)
	log := p.log.With().Str("job_id", taskID).Logger()
	pl, err := tasks.DecodeChat(t.Payload())
	if err == nil && pl.JobID != taskID {
		err = fmt.Errorf("%w: job_id %q differs from task id", tasks.ErrBadPayload, pl.JobID)
	}
	if err != nil {
		p.failUndecodable(ctx, taskID, err, log)
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	log = log.With().Str("session_id", pl.SessionID).Str("tenant", pl.Tenant).Logger()

	if err := p.awaitTurn(ctx, pl); err != nil {
		if errors.Is(err, errNotYourTurn) {
			log.Debug().Msg("job yields to an earlier job of its session")
		}
		return err
	}
	attempt, err := p.store.MarkActive(ctx, pl.JobID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		log.Warn().Msg("job record expired before the job ran; dropping it")
		return nil
	case err != nil:
		return err
	case attempt == 0:
		log.Info().Msg("job already finished; not running it again")
		return nil
	}
	log = log.With().Int("attempt", attempt).Logger()
	if attempt > p.maxAttempts {
		// Only reachable when earlier attempts died with their worker.
		jerr := store.JobError{Code: "attempts_exhausted", Message: fmt.Sprintf("gave up after %d attempts", attempt-1)}
		if _, err := p.finish(ctx, pl, store.Outcome{Status: store.StatusFailed, Error: &jerr}); err != nil {
			return err
		}
		log.Error().Str("status", store.StatusFailed).Msg("job failed: attempts exhausted")
		return fmt.Errorf("%s: %w", jerr.Message, asynq.SkipRetry)
	}
	start := time.Now()

	history, err := p.store.History(ctx, pl.Tenant, pl.SessionID)
	if err != nil {
		log.Warn().Err(err).Msg("history unavailable; continuing without it")
		history = nil
	}
	if attempt > 1 {
		p.retractInterrupted(ctx, pl.JobID, attempt, log)
	}
	req := llm.Request{Model: pl.Model, Messages: BuildPrompt(history, pl.Message, p.budget)}
	emit := stream.NewEmitter(ctx, p.store, pl.JobID, p.coalescing)
	callCtx, cancel := context.WithTimeout(ctx, p.timeout)
	reply, err := p.provider.Stream(callCtx, req, emit.Delta)
	cancel()
	if ferr := emit.Flush(); err == nil {
		err = ferr // the job was canceled while its last tokens went out
	}
	if err != nil {
		return p.failAttempt(ctx, pl, attempt, emit.Emitted(), err, log.With().Dur("duration_ms", time.Since(start)).Logger())
	}

	now := time.Now().UTC().Truncate(time.Millisecond)
	first, err := p.finish(ctx, pl, store.Outcome{
		Status: store.StatusSucceeded,
		Result: &store.Result{Content: reply.Content, Provider: p.provider.Name(), Model: reply.Model},
		Usage:  &store.Usage{PromptTokens: reply.Usage.PromptTokens, CompletionTokens: reply.Usage.CompletionTokens},
		History: []store.Message{
			{Role: "user", Content: pl.Message, JobID: pl.JobID, CreatedAt: pl.SubmittedAt.Truncate(time.Millisecond)},
			{Role: "assistant", Content: reply.Content, JobID: pl.JobID, CreatedAt: now},
		},
	})
	if err != nil {
		return err // asynq retries; Finish applies once
	}
	log.Info().Str("status", store.StatusSucceeded).Bool("recorded", first).
		Dur("duration_ms", time.Since(start)).Dur("queue_wait_ms", start.Sub(pl.SubmittedAt)).
		Int("completion_tokens", reply.Usage.CompletionTokens).Msg("job finished")
	return nil
}

// failAttempt decides between retry and failure for a failed provider call.
func (p *Pipeline) failAttempt(ctx context.Context, pl tasks.ChatPayload, attempt int, emitted bool, callErr error, log zerolog.Logger) error {
	if errors.Is(callErr, store.ErrJobFinished) || ctx.Err() != nil {
		if j, err := p.store.Get(context.WithoutCancel(ctx), pl.JobID); err == nil && j.Status == store.StatusCanceled {
			log.Info().Str("status", store.StatusCanceled).Msg("job canceled; provider call aborted")
			return nil
		}
	}
	if ctx.Err() != nil {
		// The worker is shutting down: asynq hands the task back; nothing to record.
		log.Warn().Err(callErr).Msg("job interrupted by shutdown")
		return callErr
	}
	var pe *llm.Error
	retryable := errors.Is(callErr, context.DeadlineExceeded) || (errors.As(callErr, &pe) && pe.Retryable)
	jerr := store.JobError{Code: "provider_error", Message: callErr.Error()}
	if errors.Is(callErr, context.DeadlineExceeded) {
		jerr = store.JobError{Code: "timeout", Message: fmt.Sprintf("provider call exceeded %s", p.timeout)}
	}
	if retryable && attempt < p.maxAttempts {
		if err := p.store.MarkRetrying(ctx, pl.JobID, jerr); err != nil {
			log.Warn().Err(err).Msg("could not record retrying status")
		}
		if emitted {
			p.announceRetry(ctx, pl.JobID, attempt, jerr.Message, log)
		}
		log.Warn().Err(callErr).Str("status", store.StatusRetrying).Msg("attempt failed; will retry")
		return callErr
	}
	if _, err := p.finish(ctx, pl, store.Outcome{Status: store.StatusFailed, Error: &jerr}); err != nil {
		return err // retried by asynq; Finish applies once
	}
	log.Error().Err(callErr).Str("status", store.StatusFailed).Msg("job failed")
	return fmt.Errorf("%w: %w", callErr, asynq.SkipRetry)
}

// announceRetry tells followers to discard the output of a failed attempt.
func (p *Pipeline) announceRetry(ctx context.Context, id string, failed int, reason string, log zerolog.Logger) {
	_, err := p.store.AppendEvent(ctx, id, store.EventRetry, map[string]any{"attempt": failed + 1, "reason": reason})
	if err != nil {
		log.Warn().Err(err).Msg("could not publish the retry event")
	}
}

// retractInterrupted announces a retry for an attempt that died with its
// worker after streaming tokens: its output must be discarded before this
// attempt's tokens arrive.
func (p *Pipeline) retractInterrupted(ctx context.Context, id string, attempt int, log zerolog.Logger) {
	last, ok, err := p.store.LastEvent(ctx, id)
	if err != nil {
		log.Warn().Err(err).Msg("could not read the event log")
		return
	}
	if ok && last.Type == store.EventToken {
		p.announceRetry(ctx, id, attempt-1, "the previous attempt was interrupted", log)
	}
}

// failUndecodable records a payload no retry can fix as a failed job.
func (p *Pipeline) failUndecodable(ctx context.Context, id string, cause error, log zerolog.Logger) {
	log.Error().Err(cause).Str("status", store.StatusFailed).Msg("undecodable task payload")
	j, err := p.store.Get(ctx, id)
	if err != nil {
		return // no record to update; the task is archived with the error
	}
	_, _ = p.store.Finish(ctx, id, j.Tenant, j.SessionID, store.Outcome{
		Status: store.StatusFailed, Error: &store.JobError{Code: "bad_payload", Message: cause.Error()},
	})
}

// awaitTurn returns once every earlier job of the session has finished, or
// errNotYourTurn after turnWait so that a waiting job does not hold a worker
// slot the earlier job may need.
func (p *Pipeline) awaitTurn(ctx context.Context, pl tasks.ChatPayload) error {
	deadline := time.Now().Add(p.turnWait)
	backoff := 2 * time.Millisecond
	reconciled := ""
	for {
		head, err := p.store.SessionHead(ctx, pl.Tenant, pl.SessionID)
		if err != nil {
			return err
		}
		if head == "" || head == pl.JobID {
			return nil
		}
		hj, err := p.store.Get(ctx, head)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err == nil && !store.Terminal(hj.Status) && reconciled != head {
			reconciled = head
			if hj, err = p.store.Reconcile(ctx, hj); err != nil {
				return err
			}
		}
		if errors.Is(err, store.ErrNotFound) || store.Terminal(hj.Status) {
			if err := p.store.Release(ctx, pl.Tenant, pl.SessionID, head); err != nil {
				return err
			}
			continue
		}
		if time.Now().After(deadline) {
			return errNotYourTurn
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 50*time.Millisecond)
	}
}

// retryDelay spaces real retries exponentially with jitter and hands a yielding
// job back almost at once.
func retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if !isFailure(err) {
		return 10 * time.Millisecond
	}
	d := time.Second << min(n, 6) // 1s, 2s, 4s … 64s
	return d/2 + time.Duration(float64(d/2)*rand.Float64())
}

// isFailure tells asynq which errors count against a job's retries: not a
// yield to an earlier job of the session, and not a cancel (asynq reports a
// canceled task as failed with context.Canceled; its next run sees the
// canceled record and ends at once).
func isFailure(err error) bool {
	return !errors.Is(err, errNotYourTurn) && !errors.Is(err, context.Canceled)
}
