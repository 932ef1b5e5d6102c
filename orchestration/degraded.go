package orchestration

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
)

// When every provider is down a job ends with the configured degraded reply
// (mode degrade, the default), fails (fail) or waits for the first breaker to
// half-open (defer, retry.go). A request with tools or a response format
// never gets the degraded reply.

// On-all-providers-down modes.
const (
	AllDownDegrade = "degrade"
	AllDownFail    = "fail"
	AllDownDefer   = "defer"
)

// onAllDown is what happens to the job when every provider is down: a
// request with tools or a response format gets no degraded reply (a canned
// text would break the caller's parser); it fails instead.
func (p *Pipeline) onAllDown(pl tasks.ChatPayload) string {
	if p.opt.OnAllDown == AllDownDegrade && pl.Params.Structured() {
		return AllDownFail
	}
	return p.opt.OnAllDown
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
	_ = emit.Delta(p.opt.DegradedReply)
	first, err := r.att.Finish(ctx, jobs.Outcome{
		Tail:   emit.Tail(), // the reply goes in the log with the final event
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
