// Package tracing sets up OpenTelemetry tracing from the standard OTEL_*
// variables and carries a job's trace context across the queue. With no OTLP
// endpoint configured it installs nothing: the global tracer stays the no-op
// one, and callers skip the work (Enabled).
package tracing

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Name is the instrumentation scope of chatfleet's spans.
const Name = "github.com/chatfleet/chatfleet"

var enabled bool

// Enabled reports whether spans are recorded and exported.
func Enabled() bool { return enabled }

// Tracer is chatfleet's tracer (a no-op one when tracing is off).
func Tracer() trace.Tracer { return otel.Tracer(Name) }

// propagator reads and writes W3C traceparent, tracestate and baggage.
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Setup turns tracing on when an OTLP endpoint is configured
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; the
// exporter speaks OTLP over HTTP/protobuf) and OTEL_SDK_DISABLED is not true.
// The exporter, sampler (OTEL_TRACES_SAMPLER), batching (OTEL_BSP_*) and
// resource (OTEL_RESOURCE_ATTRIBUTES) follow their standard variables;
// service is the service name unless OTEL_SERVICE_NAME says otherwise. The
// returned function flushes and stops the exporter.
func Setup(ctx context.Context, service string, getenv func(string) string) (func(context.Context) error, error) {
	none := func(context.Context) error { return nil }
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") || strings.EqualFold(getenv("OTEL_TRACES_EXPORTER"), "none") ||
		(getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "") {
		return none, nil
	}
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if p := protocol; p != "" && p != "http/protobuf" {
		return none, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: chatfleet exports OTLP over http/protobuf, got %q", p)
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return none, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	if getenv("OTEL_SERVICE_NAME") != "" {
		service = getenv("OTEL_SERVICE_NAME")
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName(service), semconv.ServiceInstanceID(worker)))
	if err != nil {
		return none, fmt.Errorf("trace resource: %w", err)
	}
	if env, err := resource.New(ctx, resource.WithFromEnv()); err == nil {
		if merged, err := resource.Merge(res, env); err == nil {
			res = merged
		}
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagator)
	enabled = true
	return tp.Shutdown, nil
}

// Inject returns ctx's trace context as a carrier for a task payload (nil
// when there is none).
func Inject(ctx context.Context) map[string]string {
	if !enabled || !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	return c
}

// Extract returns ctx with the trace context a task payload carried.
func Extract(ctx context.Context, carrier map[string]string) context.Context {
	if !enabled || len(carrier) == 0 {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier(carrier))
}

// IDs are the trace and span ids of ctx's span ("" when there is none).
func IDs(ctx context.Context) (traceID, spanID string) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return "", ""
	}
	return sc.TraceID().String(), sc.SpanID().String()
}

// Messaging are the attributes of a job's spans on its way through the
// queue (OpenTelemetry's messaging conventions; asynq over Redis).
func Messaging(queue, jobID string) []attribute.KeyValue {
	return []attribute.KeyValue{
		semconv.MessagingSystemKey.String("asynq"),
		semconv.MessagingDestinationName(queue),
		semconv.MessagingMessageID(jobID),
	}
}

var worker = func() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}()

// Worker names this process in spans (host and pid).
func Worker() string { return worker }
