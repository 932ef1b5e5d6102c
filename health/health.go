// Package health serves liveness and readiness. Liveness never touches Redis;
// readiness needs Redis and is withdrawn first on shutdown.
package health

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

// Checker answers health probes for one process.
type Checker struct {
	rdb      redis.UniversalClient
	metrics  http.Handler
	version  string
	started  time.Time
	stopping atomic.Bool
}

// NewChecker returns a Checker for a process that needs rdb to be ready and
// exposes the metrics of gatherer (as OpenMetrics to a scraper that asks:
// it carries the latency histograms' exemplars, the trace ids of jobs).
func NewChecker(rdb redis.UniversalClient, version string, gatherer prometheus.Gatherer) *Checker {
	return &Checker{rdb: rdb, version: version, started: time.Now(),
		metrics: promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{EnableOpenMetrics: true})}
}

// SetShuttingDown withdraws readiness so load balancers stop sending work.
func (h *Checker) SetShuttingDown() { h.stopping.Store(true) }

// Register adds /health, /health/live, /health/ready and /health/metrics, the
// same under /api/v1/health, and /metrics.
func (h *Checker) Register(e *echo.Echo) {
	for _, base := range []string{"/health", "/api/v1/health"} {
		e.GET(base, h.basic)
		e.GET(base+"/live", h.live)
		e.GET(base+"/ready", h.ready)
		e.GET(base+"/metrics", echo.WrapHandler(h.metrics))
	}
	e.GET("/metrics", echo.WrapHandler(h.metrics))
}

func (h *Checker) live(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]any{"status": "ok"})
}

// redisUp pings Redis with a short deadline.
func (h *Checker) redisUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	return h.rdb.Ping(ctx).Err()
}

func (h *Checker) ready(c echo.Context) error {
	if h.stopping.Load() {
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"status": "shutting_down"})
	}
	if err := h.redisUp(c.Request().Context()); err != nil {
		c.Response().Header().Set("Retry-After", "1")
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "redis": "unreachable"})
	}
	return c.JSON(http.StatusOK, map[string]any{"status": "ok"})
}

func (h *Checker) basic(c echo.Context) error {
	status, code, redisState := "ok", http.StatusOK, "ok"
	if err := h.redisUp(c.Request().Context()); err != nil {
		status, code, redisState = "degraded", http.StatusServiceUnavailable, "unreachable"
	}
	return c.JSON(code, map[string]any{
		"status": status, "redis": redisState, "version": h.version,
		"uptime_seconds": int(time.Since(h.started).Seconds()),
	})
}
