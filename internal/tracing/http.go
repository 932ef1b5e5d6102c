package tracing

import (
	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Middleware makes each request a server span, "<method> <route>" (the
// route, not the path: ids stay out of span names), the child of an incoming
// W3C traceparent (and its baggage) when the request has one. Only installed
// when tracing is on.
func Middleware() echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := c.Request()
			ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
			route := c.Path()
			if route == "" {
				route = "unmatched"
			}
			ctx, span := Tracer().Start(ctx, r.Method+" "+route, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
				semconv.HTTPRequestMethodKey.String(r.Method), semconv.HTTPRoute(route), semconv.URLPath(r.URL.Path),
				semconv.URLScheme(scheme(c)), attribute.String("user_agent.original", r.UserAgent()),
			))
			defer span.End()
			traceID, spanID := IDs(ctx)
			ctx = zerolog.Ctx(ctx).With().Str("trace_id", traceID).Str("span_id", spanID).Logger().WithContext(ctx)
			c.SetRequest(r.WithContext(ctx))
			err := next(c)
			if err != nil {
				c.Error(err) // the status is the error's answer
			}
			status := c.Response().Status
			span.SetAttributes(semconv.HTTPResponseStatusCode(status))
			if status >= 500 {
				span.SetStatus(codes.Error, "")
			}
			return nil
		}
	}
}

func scheme(c echo.Context) string {
	if c.IsTLS() {
		return "https"
	}
	return "http"
}
