package httpserve

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// TenantKey is the echo context key under which authentication leaves the
// caller's tenant, for the request log.
const TenantKey = "tenant"

// NewEcho returns an echo instance with request ids, one log line and the
// HTTP metrics per request, panic recovery, security headers, and JSON errors
// (`{"error":{"code","message"}}`). The API replaces the error handler with
// its own, which knows its error types.
func NewEcho(log zerolog.Logger, reg prometheus.Registerer) *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = jsonError
	m := newHTTPMetrics(reg)
	// Every route's series exist from the start (at zero), so that a rate()
	// or a dashboard panel has them before the first request.
	e.OnAddRouteHandler = func(_ string, r echo.Route, _ echo.HandlerFunc, _ []echo.MiddlewareFunc) {
		m.requests.WithLabelValues(r.Path, "200")
		m.duration.WithLabelValues(r.Path)
	}
	e.Use(requestLog(log, m))
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisableStackAll: true}))
	// Every answer: no framing (clickjacking), no content sniffing, no
	// referrer. Pages set a fuller Content-Security-Policy of their own.
	e.Use(middleware.SecureWithConfig(middleware.SecureConfig{
		ContentTypeNosniff: "nosniff", XFrameOptions: "DENY", ReferrerPolicy: "no-referrer",
		ContentSecurityPolicy: "frame-ancestors 'none'",
	}))
	return e
}

// jsonError answers echo's own errors (404, 405) and anything else as a 500.
func jsonError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := http.StatusInternalServerError, "internal error"
	var he *echo.HTTPError
	if errors.As(err, &he) {
		code, msg = he.Code, http.StatusText(he.Code)
	} else {
		zerolog.Ctx(c.Request().Context()).Error().Err(err).Msg("request failed")
	}
	_ = c.JSON(code, map[string]any{"error": map[string]string{"code": strconv.Itoa(code), "message": msg}})
}

type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatfleet_http_requests_total", Help: "API requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "chatfleet_http_request_duration_seconds", Help: "API latency by route pattern (streams and long polls included).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

// routeLabel is the matched route pattern, never the raw path, so that label
// values stay bounded.
func routeLabel(c echo.Context) string {
	if p := c.Path(); p != "" && p != "/*" {
		return p
	}
	return "unmatched"
}

// requestLog gives every request an id and a context logger, logs one line
// when it ends, and counts it.
func requestLog(base zerolog.Logger, m *httpMetrics) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			rid := c.Request().Header.Get(echo.HeaderXRequestID)
			if !validRequestID(rid) {
				rid = newRequestID()
			}
			c.Response().Header().Set(echo.HeaderXRequestID, rid)
			log := base.With().Str("request_id", rid).Logger()
			c.SetRequest(c.Request().WithContext(log.WithContext(c.Request().Context())))
			err := next(c)
			if err != nil {
				c.Error(err)
			}
			took := time.Since(start)
			route := routeLabel(c)
			m.requests.WithLabelValues(route, strconv.Itoa(c.Response().Status)).Inc()
			m.duration.WithLabelValues(route).Observe(took.Seconds())
			ev := log.Info()
			if c.Response().Status >= 500 {
				ev = log.Error()
			}
			ev.Str("method", c.Request().Method).Str("route", route).
				Int("status", c.Response().Status).Dur("duration_ms", took)
			if t, ok := c.Get(TenantKey).(string); ok {
				ev.Str("tenant", t)
			}
			ev.Msg("request")
			return nil
		}
	}
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
