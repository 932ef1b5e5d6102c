// Package orchestration runs chat jobs: the asynq worker and the pipeline each
// job goes through (turn → history → prompt → provider → result → history).
package orchestration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/chatfleet/chatfleet/internal/tracing"
	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
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
	// FirstToken is told each job's time from submit to its first token (nil: nobody).
	FirstToken func(time.Duration)
	// Wakeups tells a running attempt's emitter of a follower's arrival (nil: none).
	Wakeups *stream.Wakeups
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
		opt.Metrics = NewMetrics(nil)
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
	// chain is the Responses chain the payload's conversation continues,
	// read when the attempt began.
	chain []tasks.ChatMessage
}

// called is what the provider chain did in one attempt.
type called struct {
	reply    llm.Reply
	provider string
	emit     *stream.Emitter
	err      error
	// What the call was sent and streamed, for an estimate of its use when
	// it fails before its provider reports any.
	promptEstimate, streamed int
}

// spent estimates what a failed call used: its prompt and what it streamed
// (about four bytes a token). Nil when it streamed nothing: a call refused
// before answering is not billed.
func (c called) spent() *jobs.Spent {
	if c.streamed == 0 {
		return nil
	}
	return &jobs.Spent{Prompt: c.promptEstimate, Completion: max(1, c.streamed/4), Estimated: true}
}

// ProcessTask implements asynq.Handler: admit the job (an attempt), call the
// providers, settle the outcome. The worker's middleware puts the job's
// logger in ctx, counts it as active and turns a panic into an error. A job
// reaches a worker only when it is its session's turn (jobs/order.go).
func (p *Pipeline) ProcessTask(ctx context.Context, t *asynq.Task) (err error) {
	r, ctx, err := p.admit(ctx, t)
	defer func() { endSpan(trace.SpanFromContext(ctx), err) }()
	if r == nil {
		return err
	}
	defer r.att.Close()
	return p.settle(ctx, r, p.attempt(ctx, r))
}

// admit decodes the task and starts an attempt.
// It returns no run when there is nothing to call: the error (or nil) is the
// task's result. The returned context's logger names the job's session,
// tenant and attempt, and its trace ids when tracing is on: the attempt's
// span, a child of the submitter's, is in the context.
func (p *Pipeline) admit(ctx context.Context, t *asynq.Task) (*run, context.Context, error) {
	taskID, queue := taskOf(ctx)
	pl, err := tasks.DecodeChat(t.Payload())
	if err == nil && pl.JobID != tasks.JobOfTask(taskID) {
		err = fmt.Errorf("%w: job_id %q differs from task id", tasks.ErrBadPayload, pl.JobID)
	}
	if errors.Is(err, tasks.ErrNewerPayload) {
		// Written by a later release (this worker was rolled back, or
		// is not upgraded yet): the job stays queued, no attempt used,
		// until a worker that reads it takes it.
		until := p.capDelay(time.Now().Add(newerPayloadWait))
		zerolog.Ctx(ctx).Warn().Err(err).Time("until", until).Msg("task payload of a newer release; job deferred")
		return nil, ctx, &errDeferred{until: until, cause: err}
	}
	if err == nil && pl.Body {
		// A large body travels once, from the record, as the attempt starts.
		if pl, err = p.jobs.WithBody(ctx, pl); errors.Is(err, jobs.ErrNothingToRun) {
			zerolog.Ctx(ctx).Info().Err(err).Msg("task not run")
			return nil, ctx, nil
		} else if err != nil && !errors.Is(err, tasks.ErrBadPayload) {
			return nil, ctx, err
		}
	}
	if err != nil {
		p.failUndecodable(ctx, tasks.JobOfTask(taskID), err)
		return nil, ctx, fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	log := zerolog.Ctx(ctx).With().Str("session_id", pl.SessionID).Str("tenant", pl.Tenant).Logger()
	submitted := ctx // the submitter's span, when the payload carries one
	if tracing.Enabled() {
		submitted = tracing.Extract(ctx, pl.Trace)
		ctx, _ = tracing.Tracer().Start(submitted, "process "+queue, trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(append(tracing.Messaging(queue, pl.JobID), attribute.String("chatfleet.worker", tracing.Worker()))...))
		traceID, spanID := tracing.IDs(ctx)
		log = log.With().Str("trace_id", traceID).Str("span_id", spanID).Logger()
	}
	ctx = log.WithContext(ctx)

	if p.onAllDown(pl) == AllDownDefer {
		if open, until := p.chain.AllOpen(pl.Model); open {
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
	trace.SpanFromContext(ctx).SetAttributes(attribute.Int("chatfleet.attempt", att.N))
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
	if pl.Chain != nil {
		if r.chain, err = att.Chain(ctx); err != nil {
			defer att.Close()
			return nil, ctx, p.chainUnreadable(ctx, att, err)
		}
	}
	if att.N == 1 {
		p.m.queueWait.WithLabelValues(tasks.PriorityOfQueue(queue)).Observe(r.start.Sub(pl.SubmittedAt).Seconds())
		if tracing.Enabled() {
			waitSpans(submitted, pl.SubmittedAt, att.TurnAt, r.start)
		}
	}
	return r, ctx, nil
}

// attempt calls the provider chain, streaming the reply into the job's log.
func (p *Pipeline) attempt(ctx context.Context, r *run) called {
	pl := r.pl
	req := llm.Request{Model: pl.Model, Messages: p.prompt(ctx, r), Priority: pl.Priority}
	if pl.Params != nil {
		req.Params = *pl.Params
	}
	c := called{emit: stream.NewEmitter(ctx, r.att, p.opt.Coalescing), promptEstimate: llm.EstimatePrompt(req)}
	if r.att.Logged >= 0 {
		c.emit.Starts(r.att.Logged + 1)
	}
	if r.att.Followed {
		c.emit.Followed()
	}
	defer p.opt.Wakeups.Add(pl.JobID, c.emit)()
	firstToken := sync.OnceFunc(func() {
		d := time.Since(pl.SubmittedAt)
		observe(ctx, p.m.ttft, d.Seconds())
		if p.opt.FirstToken != nil {
			p.opt.FirstToken(d)
		}
	})
	onDelta := func(d llm.Delta) error {
		firstToken()
		if t := d.Tool; t != nil {
			c.streamed += len(t.Name) + len(t.Arguments)
			return c.emit.ToolCall(t.Index, t.ID, t.Name, t.Arguments)
		}
		c.streamed += len(d.Text)
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

// modelsReloadGap bounds how long every process takes to read an edit of
// the models file (each re-reads it every 5 s) and some more: a job for a
// model its worker does not know waits that long before it fails.
const modelsReloadGap = 15 * time.Second

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
	var unknown *llm.UnknownModelError
	if errors.As(c.err, &unknown) && time.Since(pl.SubmittedAt) < modelsReloadGap {
		// An API that read an edit of the models file first took a job for
		// a model this worker has yet to read: it waits for the reload.
		log.Info().Str("model", unknown.Model).Msg("model not in this worker's list yet; job waits for the models file's reload")
		return p.deferJob(ctx, r.att, time.Now().Add(modelsReloadGap/3))
	}
	var busy *llm.CapacityError
	if errors.As(c.err, &busy) {
		// Not a failure: the job goes back to the front of its queue in the
		// scheduler, its attempt handed back, and no job of its model is
		// handed out until the capacity returns.
		log.Debug().Str("provider", busy.Provider).Str("reason", busy.Reason).Time("until", busy.Until).Msg("model at capacity; job waits in the scheduler")
		if err := r.att.GiveBack(ctx, p.capDelay(busy.Until), busy.Every); err != nil {
			log.Warn().Err(err).Msg("could not give the job back to the scheduler; it waits in the queue")
			return p.deferJob(ctx, r.att, busy.Until)
		}
		return nil
	}
	if c.err != nil {
		return p.failAttempt(ctx, pl, r.att, c.emit.Emitted(), c.err, c.spent())
	}

	now := time.Now().UTC().Truncate(time.Millisecond)
	outcome := jobs.Outcome{
		Tail:   c.emit.Tail(),
		Status: jobs.StatusSucceeded,
		Result: &jobs.Result{Content: c.reply.Content, ToolCalls: c.reply.ToolCalls, FinishReason: c.reply.FinishReason,
			Provider: c.provider, Model: c.reply.Model},
		Usage:      &jobs.Usage{PromptTokens: c.reply.Usage.PromptTokens, CompletionTokens: c.reply.Usage.CompletionTokens},
		UsageModel: c.reply.Asked,
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
		observe(ctx, p.m.duration, time.Since(r.start).Seconds())
	}
	log.Info().Str("status", jobs.StatusSucceeded).Bool("recorded", first).Str("provider", c.provider).Str("model", c.reply.Asked).
		Dur("queue_wait_ms", r.start.Sub(pl.SubmittedAt)).
		Int("completion_tokens", c.reply.Usage.CompletionTokens).Msg("job finished")
	return nil
}

// prompt is the conversation sent with the job (after the instructions and
// the Responses chain it continues, if any), or else the session's history,
// the tool results and the new message, within the token budget.
func (p *Pipeline) prompt(ctx context.Context, r *run) []llm.Message {
	pl, att := r.pl, r.att
	if pl.Chain != nil {
		out := make([]llm.Message, 0, 1+len(r.chain)+len(pl.Messages))
		if pl.Chain.Instructions != "" {
			out = append(out, llm.Message{Role: "system", Content: pl.Chain.Instructions})
		}
		return append(append(out, r.chain...), pl.Messages...)
	}
	if len(pl.Messages) > 0 {
		return pl.Messages
	}
	if att.BadHistory != nil {
		zerolog.Ctx(ctx).Warn().Err(att.BadHistory).Msg("history unreadable; continuing without it")
		p.m.historyUnavailable.Inc()
	}
	return BuildPrompt(att.History, pl.ToolResults, pl.Message, p.budget)
}

// chainUnreadable ends an attempt whose Responses chain could not be read:
// a response of it that is gone fails the job (previous_response_not_found,
// as OpenAI answers), anything else (Redis) hands the attempt back for a
// moment, uncounted.
func (p *Pipeline) chainUnreadable(ctx context.Context, att *jobs.Attempt, err error) error {
	log := zerolog.Ctx(ctx)
	if !errors.Is(err, jobs.ErrChainGone) {
		log.Warn().Err(err).Msg("could not read the responses chain; job deferred")
		return p.deferJob(ctx, att, time.Now().Add(time.Second))
	}
	jerr := jobs.JobError{Code: "previous_response_not_found",
		Message: "a response of the conversation that this one continues has expired or was deleted since it was submitted"}
	first, ferr := att.Finish(ctx, jobs.Outcome{Status: jobs.StatusFailed, Error: &jerr})
	if ferr != nil {
		return ferr // retried by asynq; Finish applies once
	}
	if first {
		p.m.jobs.WithLabelValues(jobs.StatusFailed).Inc()
	}
	log.Error().Err(err).Str("status", jobs.StatusFailed).Msg("job failed: its responses chain is gone")
	return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
}

// failUndecodable records a payload no retry can fix as a failed job.
func (p *Pipeline) failUndecodable(ctx context.Context, task string, cause error) {
	zerolog.Ctx(ctx).Error().Err(cause).Str("status", jobs.StatusFailed).Msg("undecodable task payload")
	p.jobs.FailUndecodable(ctx, task, cause)
}

// endSpan ends an attempt's span with what the attempt came to: a deferral
// (capacity, every provider open) is no error.
func endSpan(span trace.Span, err error) {
	var deferred *errDeferred
	if err != nil && !errors.As(err, &deferred) {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// waitSpans record a job's time before its first attempt: waiting for its
// session's earlier turns (when it did: until turnAt), then in the queue.
func waitSpans(ctx context.Context, submitted, turnAt, start time.Time) {
	from := submitted
	if turnAt.After(submitted) && turnAt.Before(start) {
		_, turn := tracing.Tracer().Start(ctx, "session turn wait", trace.WithTimestamp(submitted))
		turn.End(trace.WithTimestamp(turnAt))
		from = turnAt
	}
	_, wait := tracing.Tracer().Start(ctx, "queue wait", trace.WithTimestamp(from),
		trace.WithAttributes(attribute.Int("chatfleet.attempt", 1)))
	wait.End(trace.WithTimestamp(start))
}
