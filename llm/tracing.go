package llm

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/chatfleet/chatfleet/internal/tracing"
)

// A provider call's span follows OpenTelemetry's GenAI conventions: named
// "chat <model>", a client span with the system, the models, the usage and
// the finish reason, the first token as an event. Prompts and replies are
// never recorded.

// genAISystem names a provider kind as the conventions do.
func genAISystem(kind string) string {
	if kind == "sim" {
		return "chatfleet.sim"
	}
	return kind
}

// span starts the span of one call to g; the returned onDelta marks the
// first token, end closes the span with the call's outcome.
func (g *Guarded) span(ctx context.Context, req Request, onDelta func(Delta) error) (context.Context, func(Delta) error, func(Reply, error)) {
	model := req.Model
	if model == "" {
		model = g.model
	}
	start := time.Now()
	ctx, span := tracing.Tracer().Start(ctx, "chat "+model, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("gen_ai.operation.name", "chat"),
		attribute.String("gen_ai.system", genAISystem(g.kind)),
		attribute.String("gen_ai.provider.name", genAISystem(g.kind)),
		attribute.String("gen_ai.request.model", model),
		attribute.String("chatfleet.provider", g.Name()),
		attribute.String("chatfleet.model", g.public),
		attribute.String("chatfleet.deployment", g.Name()),
	))
	first := sync.OnceFunc(func() {
		ttft := time.Since(start)
		span.AddEvent("gen_ai.first_token", trace.WithAttributes(attribute.Float64("gen_ai.response.time_to_first_token", ttft.Seconds())))
		span.SetAttributes(attribute.Float64("gen_ai.response.time_to_first_token", ttft.Seconds()))
	})
	wrapped := func(d Delta) error { first(); return onDelta(d) }
	end := func(reply Reply, err error) {
		if err == nil {
			attrs := []attribute.KeyValue{
				attribute.String("gen_ai.response.model", reply.Model),
				attribute.Int("gen_ai.usage.input_tokens", reply.Usage.PromptTokens),
				attribute.Int("gen_ai.usage.output_tokens", reply.Usage.CompletionTokens),
			}
			if reply.FinishReason != "" {
				attrs = append(attrs, attribute.StringSlice("gen_ai.response.finish_reasons", []string{reply.FinishReason}))
			}
			span.SetAttributes(attrs...)
		} else {
			var busy *CapacityError
			if errors.As(err, &busy) {
				span.SetAttributes(attribute.String("chatfleet.capacity", busy.Reason))
			}
			span.SetAttributes(attribute.String("error.type", errorType(err)))
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
	return ctx, wrapped, end
}

// errorType is a bounded name of a call's failure.
func errorType(err error) string {
	var pe *Error
	var open *ErrOpen
	var busy *CapacityError
	switch {
	case errors.As(err, &open):
		return "breaker_open"
	case errors.As(err, &busy):
		return "capacity"
	case errors.As(err, &pe) && pe.Status > 0:
		return "http_" + strconv.Itoa(pe.Status)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "error"
}

// capacityWaitSpan records a wait for the provider's capacity that already
// happened (from start to now), when there was one.
func capacityWaitSpan(ctx context.Context, provider string, start time.Time) {
	if !tracing.Enabled() || time.Since(start) < time.Millisecond {
		return
	}
	_, span := tracing.Tracer().Start(ctx, "capacity wait", trace.WithTimestamp(start),
		trace.WithAttributes(attribute.String("chatfleet.provider", provider)))
	span.End()
}
