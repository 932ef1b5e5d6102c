package tracing

import (
	"context"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// Without an endpoint nothing is installed: the fleet pays nothing.
func TestOffWithoutAnEndpoint(t *testing.T) {
	for _, m := range []map[string]string{
		{},
		{"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
	} {
		if _, err := Setup(context.Background(), "chatfleet-api", env(m)); err != nil || Enabled() {
			t.Fatalf("%v: enabled %v, %v", m, Enabled(), err)
		}
		if Inject(context.Background()) != nil {
			t.Fatal("a trace context was injected with tracing off")
		}
	}
	_, err := Setup(context.Background(), "chatfleet-api", env(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}))
	if err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_PROTOCOL") || Enabled() {
		t.Fatalf("grpc: %v", err)
	}
}
