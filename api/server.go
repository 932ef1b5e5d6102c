// Package api serves chatfleet's HTTP API: it validates requests, writes job
// records and enqueues tasks. It never calls an LLM.
package api

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/models"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/webhooks"
)

// Options configures the API.
type Options struct {
	APIKeys   map[[32]byte]string // SHA-256 of a key -> tenant
	Heartbeat time.Duration       // SSE comment heartbeat
	// Closing ends the streams served off their connections; cancel it when
	// shutdown begins (default: never). Background work logs to its logger.
	Closing    context.Context
	Registerer prometheus.Registerer
	// TenantRate and TenantBurst limit each tenant's requests per second,
	// across every API process (0: unlimited).
	TenantRate, TenantBurst int
	// Models is the model list in force (it changes when the models file
	// is edited); nil: one model, any name.
	Models func() *models.Set
	// Allowed are the names a request may send before the models file
	// (CHATFLEET_MODELS); empty: any. /v1/models lists them.
	Allowed []string
	// StreamMaxDuration ends a stream after this long (default 1h); the
	// client resumes with Last-Event-ID.
	StreamMaxDuration time.Duration
	// TenantMaxStreams bounds a tenant's concurrent streams across every API
	// process (0: unlimited).
	TenantMaxStreams int
	// Retention is how long /v1/responses records are kept (the job retention; default 24h).
	Retention time.Duration
	// MaxConversationBytes caps a /v1/responses conversation continued with
	// previous_response_id (0: no cap).
	MaxConversationBytes int
	// MaxInflightBytes and TenantMaxInflightBytes bound the request bytes
	// this process reads and holds until their jobs are submitted, in all
	// and per tenant (0: no limit); over either a submit gets 429
	// too_many_bytes_in_flight before its body is read.
	MaxInflightBytes, TenantMaxInflightBytes int64
	// FilesMaxBytes bounds an uploaded file, BatchMaxRequests a batch's
	// lines; files and batches are kept FilesRetention (the Batch API).
	FilesMaxBytes    int64
	BatchMaxRequests int
	FilesRetention   time.Duration
	// Webhooks are the tenants' webhook endpoints and secrets (nil: none).
	Webhooks *webhooks.Registry
	// BatchWebhooks enqueues the webhooks of a batch that ended
	// (webhooks.Outbox.FlushBatch); nil: none.
	BatchWebhooks func(context.Context, store.Batch) error
	// WebhookHTTPSOnly refuses a per-job webhook_url that is not https.
	WebhookHTTPSOnly bool
	// Prices are the models' prices in US dollars per million tokens
	// (input, output), as they stand (an edit of the models file changes
	// them); usage of other models has no cost. nil: none.
	Prices func() map[string][2]float64
}

// Deps are what the API works with.
type Deps struct {
	Jobs  *jobs.Manager         // the job lifecycle
	Store store.Reader          // records, histories, event logs, usage (read only)
	Hub   *stream.Hub           // live events
	Redis redis.UniversalClient // tenant rate limits
	// Interrupt cuts short the reads under way on Redis's connections
	// (redisconn.Conns.Interrupt): when Redis stops answering, requests
	// under way are answered 503 at once instead of after their timeouts.
	Interrupt func()
}

type metrics struct {
	streamClients prometheus.Gauge
	replays       prometheus.Counter
	overSoftLimit prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		reg = prometheus.NewRegistry() // metrics kept but not exposed
	}
	m := &metrics{
		streamClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatfleet_stream_clients", Help: "Open SSE streams on this API process.",
		}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatfleet_idempotent_replays_total", Help: "POSTs answered with an existing job (same Idempotency-Key and body).",
		}),
		overSoftLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatfleet_tenants_over_soft_limit", Help: "Tenants whose spend in the budget's period has passed its soft limit (the same from every API process).",
		}),
	}
	reg.MustRegister(m.streamClients, m.replays, m.overSoftLimit)
	return m
}

// Server holds the API's handlers.
type Server struct {
	jobs    *jobs.Manager
	store   store.Reader
	hub     *stream.Hub
	keys    *keyring
	rate    *tenantLimiter
	rdb     redis.UniversalClient
	cap     *streamCap
	bytes   *inflight
	opt     Options
	m       *metrics
	streams sync.WaitGroup // streams served off their connections
	gate    redisGate      // 503 at once while Redis does not answer
}

// New returns the API.
func New(d Deps, opt Options) *Server {
	if opt.Heartbeat <= 0 {
		opt.Heartbeat = 15 * time.Second
	}
	if opt.Closing == nil {
		opt.Closing = context.Background()
	}
	if opt.StreamMaxDuration <= 0 {
		opt.StreamMaxDuration = time.Hour
	}
	if opt.Retention <= 0 {
		opt.Retention = 24 * time.Hour
	}
	if opt.FilesMaxBytes <= 0 {
		opt.FilesMaxBytes = 100 << 20
	}
	if opt.BatchMaxRequests <= 0 {
		opt.BatchMaxRequests = 50000
	}
	if opt.FilesRetention <= 0 {
		opt.FilesRetention = 7 * 24 * time.Hour
	}
	s := &Server{jobs: d.Jobs, store: d.Store, hub: d.Hub, keys: newKeyring(opt.APIKeys), opt: opt, m: newMetrics(opt.Registerer),
		rate: newTenantLimiter(d.Redis, opt.TenantRate, opt.TenantBurst), rdb: d.Redis,
		cap:   &streamCap{rdb: d.Redis, max: opt.TenantMaxStreams, lease: 3 * opt.Heartbeat},
		bytes: newInflight(opt.MaxInflightBytes, opt.TenantMaxInflightBytes)}
	s.gate.interrupt = d.Interrupt
	go s.gate.watch(opt.Closing, d.Redis)
	go s.watchBudgets(opt.Closing, s.m.overSoftLimit)
	return s
}

// Drain waits until the streams served off their connections have ended
// (cancel Options.Closing first), or ctx ends.
func (s *Server) Drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.streams.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain streams: %w", ctx.Err())
	}
}

// Register adds the job routes.
func (s *Server) Register(e *echo.Echo) {
	e.HTTPErrorHandler = handleError
	// Middleware per route, not per group: a group's catch-all would turn a
	// wrong method into 404 instead of 405.
	mw := []echo.MiddlewareFunc{auth(s.keys), s.gate.middleware, s.rate.middleware}
	e.POST("/api/v1/chat/jobs", s.submit, append(mw, s.bytes.limit(maxBodyBytes))...)
	e.GET("/api/v1/chat/jobs", s.listJobs, mw...)
	e.GET("/api/v1/chat/jobs/:id", s.getJob, mw...)
	e.GET("/api/v1/usage", s.usage, mw...)
	e.GET("/api/v1/chat/jobs/:id/stream", s.streamJob, s.gate.refuse, s.streamAuth, s.rate.middleware)
	e.POST("/api/v1/chat/jobs/:id/stream-token", s.issueStreamToken, mw...)
	e.POST("/api/v1/chat/jobs/:id/cancel", s.cancelJob, mw...)
	e.GET("/api/v1/sessions/:session_id/messages", s.sessionMessages, mw...)
	s.registerOpenAI(e)
	s.registerResponses(e)
	s.registerFiles(e)
	s.registerBatches(e)
}

type submitResponse struct {
	JobID     string `json:"job_id"`
	Status    string `json:"status"`
	SessionID string `json:"session_id"`
	StatusURL string `json:"status_url"`
	StreamURL string `json:"stream_url"`
}
