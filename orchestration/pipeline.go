// Package orchestration runs chat jobs: the asynq worker and the pipeline each
// job goes through (turn → history → prompt → provider → result → history).
package orchestration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
)

// errDeferred parks a job while every provider's breaker is open (mode
// defer). Not a failure: asynq retries it when the first breaker half-opens.
type errDeferred struct{ until time.Time }

func (e *errDeferred) Error() string {
	return "every provider is open; job deferred until " + e.until.UTC().Format(time.RFC3339)
}

// On-all-providers-down modes.
const (
	AllDownDegrade = "degrade"
	AllDownFail    = "fail"
	AllDownDefer   = "defer"
)

// PipelineOptions tunes the pipeline.
type PipelineOptions struct {
	// MaxRetries is the number of attempts after the first. Attempts are
	// counted in the job record, so an attempt cut short by a crash counts too,
	// and a job that crashes its worker every time still ends.
	MaxRetries    int
	CallTimeout   time.Duration // one provider call
	Coalescing    stream.Coalescing
	OnAllDown     string // degrade (default), fail or defer
	DegradedReply string
	// MaxRetryDelay caps every retry delay, a provider's Retry-After
	// included (default 5m).
	MaxRetryDelay time.Duration
	Metrics       *Metrics
}

// Pipeline is the asynq handler of chat:complete tasks. It decides what an
// attempt comes to; the job's lifecycle (jobs) records it.
type Pipeline struct {
	jobs   *jobs.Manager
	chain  *llm.Chain
	opt    PipelineOptions
	m      *Metrics
	budget int // prompt tokens
}

// NewPipeline returns the handler.
func NewPipeline(jm *jobs.Manager, chain *llm.Chain, opt PipelineOptions) *Pipeline {
	if opt.OnAllDown == "" {
		opt.OnAllDown = AllDownDegrade
	}
	if opt.Metrics == nil {
		opt.Metrics = NewMetrics(nil, tasks.Queues)
	}
	if opt.MaxRetryDelay <= 0 {
		opt.MaxRetryDelay = 5 * time.Minute
	}
	return &Pipeline{jobs: jm, chain: chain, opt: opt, m: opt.Metrics, budget: 6000}
}

func (p *Pipeline) maxAttempts() int { return p.opt.MaxRetries + 1 }

// run is one admitted attempt of a job.
type run struct {
	pl    tasks.ChatPayload
	att   *jobs.Attempt
	start time.Time
}

// called is what the provider chain did in one attempt.
type called struct {
	reply    llm.Reply
	provider string
	emit     *stream.Emitter
	err      error
}

// ProcessTask implements asynq.Handler: admit the job (an attempt), call the
// providers, settle the outcome. The worker's middleware puts the job's
// logger in ctx, counts it as active and turns a panic into an error. A job
// reaches a worker only when it is its session's turn (jobs/order.go).
func (p *Pipeline) ProcessTask(ctx context.Context, t *asynq.Task) error {
	r, ctx, err := p.admit(ctx, t)
	if r == nil {
		return err
	}
	defer r.att.Close()
	return p.settle(ctx, r, p.attempt(ctx, r))
}

// admit decodes the task and starts an attempt.
// It returns no run when there is nothing to call: the error (or nil) is the
// task's result. The returned context's logger names the job's session,
// tenant and attempt.
func (p *Pipeline) admit(ctx context.Context, t *asynq.Task) (*run, context.Context, error) {
	taskID, _ := asynq.GetTaskID(ctx)
	pl, err := tasks.DecodeChat(t.Payload())
	if err == nil && pl.JobID != tasks.JobOfTask(taskID) {
		err = fmt.Errorf("%w: job_id %q differs from task id", tasks.ErrBadPayload, pl.JobID)
	}
	if err != nil {
		p.failUndecodable(ctx, taskID, err)
		return nil, ctx, fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	log := zerolog.Ctx(ctx).With().Str("session_id", pl.SessionID).Str("tenant", pl.Tenant).Logger()
	ctx = log.WithContext(ctx)

	if p.onAllDown(pl) == AllDownDefer {
		if open, until := p.chain.AllOpen(); open {
			log.Info().Time("until", until).Msg("every provider is open; job deferred")
			until = p.capDelay(until)
			if err := p.jobs.Hold(ctx, pl, until); err != nil {
				log.Warn().Err(err).Msg("could not extend the record of a deferred job")
			}
			return nil, ctx, &errDeferred{until: until}
		}
	}
	att, err := p.jobs.Start(ctx, pl, taskID)
	if errors.Is(err, jobs.ErrNothingToRun) {
		log.Info().Err(err).Msg("task not run")
		return nil, ctx, nil
	}
	if err != nil {
		return nil, ctx, err
	}
	log = log.With().Int("attempt", att.N).Logger()
	ctx = log.WithContext(ctx)
	if att.N > p.maxAttempts() {
		// Only reachable when earlier attempts died with their worker.
		defer att.Close()
		jerr := jobs.JobError{Code: "attempts_exhausted", Message: fmt.Sprintf("gave up after %d attempts", att.N-1)}
		if _, err := att.Finish(ctx, jobs.Outcome{Status: jobs.StatusFailed, Error: &jerr}); err != nil {
			return nil, ctx, err
		}
		log.Error().Str("status", jobs.StatusFailed).Msg("job failed: attempts exhausted")
		p.m.jobs.WithLabelValues(jobs.StatusFailed).Inc()
		return nil, ctx, fmt.Errorf("%s: %w", jerr.Message, asynq.SkipRetry)
	}
	r := &run{pl: pl, att: att, start: time.Now()}
	if att.N == 1 {
		queue, _ := asynq.GetQueueName(ctx)
		p.m.queueWait.WithLabelValues(queue).Observe(r.start.Sub(pl.SubmittedAt).Seconds())
	}
	return r, ctx, nil
}

// attempt calls the provider chain, streaming the reply into the job's log.
func (p *Pipeline) attempt(ctx context.Context, r *run) called {
	pl := r.pl
	req := llm.Request{Model: pl.Model, Messages: p.prompt(ctx, pl, r.att), Priority: pl.Priority}
	if pl.Params != nil {
		req.Params = *pl.Params
	}
	c := called{emit: stream.NewEmitter(ctx, r.att, p.opt.Coalescing)}
	firstToken := sync.OnceFunc(func() { p.m.ttft.Observe(time.Since(pl.SubmittedAt).Seconds()) })
	onDelta := func(d llm.Delta) error {
		firstToken()
		if t := d.Tool; t != nil {
			return c.emit.ToolCall(t.Index, t.ID, t.Name, t.Arguments)
		}
		return c.emit.Delta(d.Text)
	}
	callCtx, cancel := context.WithTimeout(ctx, p.opt.CallTimeout)
	c.reply, c.provider, c.err = p.chain.Stream(callCtx, req, onDelta)
	cancel()
	if c.err != nil {
		_ = c.emit.Flush() // a reply that ends in a retry or a failure keeps what it said
	}
	return c // a whole reply's last batch goes out with the final script (settle)
}

// settle records what the attempt came to: the reply, a degraded reply, a
// deferral, a retry or a failure.
func (p *Pipeline) settle(ctx context.Context, r *run, c called) error {
	pl := r.pl
	log := zerolog.Ctx(ctx).With().Dur("duration_ms", time.Since(r.start)).Logger()
	ctx = log.WithContext(ctx)
	var allDown *llm.AllDownError
	onAllDown := p.onAllDown(pl)
	if errors.As(c.err, &allDown) && (allDown.AllOpen || r.att.N >= p.maxAttempts()) && onAllDown == AllDownDegrade {
		return p.degrade(ctx, r, c.emit, allDown)
	}
	if allDown != nil && allDown.AllOpen && onAllDown == AllDownDefer {
		log.Info().Time("until", allDown.Until).Msg("every provider is open; job deferred")
		return p.deferJob(ctx, r.att, allDown.Until)
	}
	var busy *llm.CapacityError
	if errors.As(c.err, &busy) {
		// Not a failure: the job waits in the queue for the provider's
		// capacity, its attempt handed back.
		log.Debug().Str("provider", busy.Provider).Str("reason", busy.Reason).Time("until", busy.Until).Msg("provider at capacity; job waits in the queue")
		return p.deferJob(ctx, r.att, busy.Until)
	}
	if c.err != nil {
		return p.failAttempt(ctx, pl, r.att, c.emit.Emitted(), c.err)
	}

	now := time.Now().UTC().Truncate(time.Millisecond)
	outcome := jobs.Outcome{
		Tail:   c.emit.Tail(),
		Status: jobs.StatusSucceeded,
		Result: &jobs.Result{Content: c.reply.Content, ToolCalls: c.reply.ToolCalls, FinishReason: c.reply.FinishReason,
			Provider: c.provider, Model: c.reply.Model},
		Usage: &jobs.Usage{PromptTokens: c.reply.Usage.PromptTokens, CompletionTokens: c.reply.Usage.CompletionTokens},
	}
	if len(pl.Messages) == 0 {
		// The session's history keeps the turn in order: the tool results
		// it brought, its message, the reply with its tool calls.
		asked := pl.SubmittedAt.Truncate(time.Millisecond)
		for _, tr := range pl.ToolResults {
			outcome.History = append(outcome.History, jobs.Message{Role: "tool", Content: tr.Content, ToolCallID: tr.ToolCallID, JobID: pl.JobID, CreatedAt: asked})
		}
		if pl.Message != "" {
			outcome.History = append(outcome.History, jobs.Message{Role: "user", Content: pl.Message, JobID: pl.JobID, CreatedAt: asked})
		}
		outcome.History = append(outcome.History, jobs.Message{Role: "assistant", Content: c.reply.Content, ToolCalls: c.reply.ToolCalls, JobID: pl.JobID, CreatedAt: now})
	}
	first, err := r.att.Finish(ctx, outcome)
	if err != nil {
		return err // asynq retries; Finish applies once
	}
	if first {
		p.m.jobs.WithLabelValues(jobs.StatusSucceeded).Inc()
		p.m.duration.Observe(time.Since(r.start).Seconds())
	}
	log.Info().Str("status", jobs.StatusSucceeded).Bool("recorded", first).Str("provider", c.provider).
		Dur("queue_wait_ms", r.start.Sub(pl.SubmittedAt)).
		Int("completion_tokens", c.reply.Usage.CompletionTokens).Msg("job finished")
	return nil
}

// onAllDown is what happens to the job when every provider is down: a
// request with tools or a response format gets no degraded reply (a canned
// text would break the caller's parser); it fails instead.
func (p *Pipeline) onAllDown(pl tasks.ChatPayload) string {
	if p.opt.OnAllDown == AllDownDegrade && pl.Params.Structured() {
		return AllDownFail
	}
	return p.opt.OnAllDown
}

// prompt is the conversation sent with the job, or else the session's history,
// the tool results and the new message, within the token budget.
func (p *Pipeline) prompt(ctx context.Context, pl tasks.ChatPayload, att *jobs.Attempt) []llm.Message {
	if len(pl.Messages) > 0 {
		return pl.Messages
	}
	if att.BadHistory != nil {
		zerolog.Ctx(ctx).Warn().Err(att.BadHistory).Msg("history unreadable; continuing without it")
		p.m.historyUnavailable.Inc()
	}
	return BuildPrompt(att.History, pl.ToolResults, pl.Message, p.budget)
}

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

// degrade ends a job whose providers are all down with the configured reply,
// marked degraded. It is not added to the session's history: it is not the
// model's answer, and the next turn should not build on it.
func (p *Pipeline) degrade(ctx context.Context, r *run, emit *stream.Emitter, cause *llm.AllDownError) error {
	log := zerolog.Ctx(ctx)
	reason := "all_failed"
	if cause.AllOpen {
		reason = "all_open"
	}
	if emit.Emitted() {
		p.announceRetry(ctx, r.att, r.att.N, "every provider failed; answering with the degraded reply")
	}
	if err := emit.Delta(p.opt.DegradedReply); err == nil {
		_ = emit.Flush()
	}
	first, err := r.att.Finish(ctx, jobs.Outcome{
		Status: jobs.StatusSucceeded,
		Result: &jobs.Result{Content: p.opt.DegradedReply, Degraded: true, Provider: "none"},
		Usage:  &jobs.Usage{},
	})
	if err != nil {
		return err
	}
	if first {
		p.m.jobs.WithLabelValues("degraded").Inc()
		p.m.degraded.WithLabelValues(reason).Inc()
		p.m.duration.Observe(time.Since(r.start).Seconds())
	}
	log.Warn().Err(cause).Str("status", jobs.StatusSucceeded).Bool("degraded", true).Str("reason", reason).Msg("job finished with the degraded reply")
	return nil
}

// failAttempt decides between retry and failure for a failed provider call.
func (p *Pipeline) failAttempt(ctx context.Context, pl tasks.ChatPayload, att *jobs.Attempt, emitted bool, callErr error) error {
	log := zerolog.Ctx(ctx)
	if errors.Is(callErr, jobs.ErrJobFinished) || errors.Is(callErr, jobs.ErrSuperseded) || ctx.Err() != nil {
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
		if err := att.Retry(ctx, jerr, until); err != nil {
			log.Warn().Err(err).Msg("could not record retrying status")
		}
		if emitted {
			p.announceRetry(ctx, att, att.N+1, jerr.Message)
		}
		log.Warn().Err(callErr).Str("status", jobs.StatusRetrying).Msg("attempt failed; will retry")
		return callErr
	}
	first, err := att.Finish(ctx, jobs.Outcome{Status: jobs.StatusFailed, Error: &jerr})
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
	switch {
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

// failUndecodable records a payload no retry can fix as a failed job.
func (p *Pipeline) failUndecodable(ctx context.Context, id string, cause error) {
	zerolog.Ctx(ctx).Error().Err(cause).Str("status", jobs.StatusFailed).Msg("undecodable task payload")
	p.jobs.FailUndecodable(ctx, id, cause)
}

// retryDelay (capped by MaxRetryDelay) spaces real retries exponentially
// with jitter; a deferred job comes back when its deferral ends.
func (p *Pipeline) retryDelay(n int, err error, t *asynq.Task) time.Duration {
	return min(retryDelay(n, err, t), p.opt.MaxRetryDelay)
}

func retryDelay(n int, err error, _ *asynq.Task) time.Duration {
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
