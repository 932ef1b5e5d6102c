// Package api serves chatfleet's HTTP API: it validates requests, writes job
// records and enqueues tasks. It never calls an LLM.
package api

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
)

// Options configures the API.
type Options struct {
	APIKeys   map[[32]byte]string // SHA-256 of a key -> tenant
	Heartbeat time.Duration       // SSE comment heartbeat
	// Closing ends the streams served off their connections; cancel it when
	// shutdown begins (default: never).
	Closing    context.Context
	Registerer prometheus.Registerer
	// TenantRate and TenantBurst limit each tenant's requests per second,
	// across every API process (0: unlimited).
	TenantRate, TenantBurst int
	Models                  []string // models a job may ask for; empty: any
	DefaultModel            string   // what /v1/models lists when Models is empty
	// StreamMaxDuration ends a stream after this long (default 1h); the
	// client resumes with Last-Event-ID.
	StreamMaxDuration time.Duration
	// TenantMaxStreams bounds a tenant's concurrent streams across every API
	// process (0: unlimited).
	TenantMaxStreams int
	// Retention is how long /v1/responses records are kept (the job retention; default 24h).
	Retention time.Duration
	// Providers are the kinds of the provider chain, primary first: a
	// request part that none of them can carry is refused at once.
	Providers []string
}

// Deps are what the API works with.
type Deps struct {
	Jobs  *jobs.Manager         // the job lifecycle
	Store *store.Store          // histories and event logs
	Hub   *stream.Hub           // live events
	Redis redis.UniversalClient // tenant rate limits
}

type metrics struct {
	streamClients prometheus.Gauge
	replays       prometheus.Counter
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
	}
	reg.MustRegister(m.streamClients, m.replays)
	return m
}

// Server holds the API's handlers.
type Server struct {
	jobs    *jobs.Manager
	store   *store.Store
	hub     *stream.Hub
	keys    *keyring
	rate    *tenantLimiter
	rdb     redis.UniversalClient
	cap     *streamCap
	opt     Options
	m       *metrics
	streams sync.WaitGroup // streams served off their connections
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
	return &Server{jobs: d.Jobs, store: d.Store, hub: d.Hub, keys: newKeyring(opt.APIKeys), opt: opt, m: newMetrics(opt.Registerer),
		rate: newTenantLimiter(d.Redis, opt.TenantRate, opt.TenantBurst), rdb: d.Redis,
		cap: &streamCap{rdb: d.Redis, max: opt.TenantMaxStreams, lease: 3 * opt.Heartbeat}}
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
	mw := []echo.MiddlewareFunc{auth(s.keys), s.rate.middleware}
	e.POST("/api/v1/chat/jobs", s.submit, mw...)
	e.GET("/api/v1/chat/jobs/:id", s.getJob, mw...)
	e.GET("/api/v1/chat/jobs/:id/stream", s.streamJob, s.streamAuth, s.rate.middleware)
	e.POST("/api/v1/chat/jobs/:id/stream-token", s.issueStreamToken, mw...)
	e.POST("/api/v1/chat/jobs/:id/cancel", s.cancelJob, mw...)
	e.GET("/api/v1/sessions/:session_id/messages", s.sessionMessages, mw...)
	s.registerOpenAI(e)
	s.registerResponses(e)
}

type submitResponse struct {
	JobID     string `json:"job_id"`
	Status    string `json:"status"`
	SessionID string `json:"session_id"`
	StatusURL string `json:"status_url"`
	StreamURL string `json:"stream_url"`
}

func (s *Server) submit(c echo.Context) error {
	var req submitRequest
	if err := readJSON(c, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	if req.Model != "" && len(s.opt.Models) > 0 && !slices.Contains(s.opt.Models, req.Model) {
		return invalid("model", fmt.Sprintf("%q is not an allowed model (%s)", req.Model, strings.Join(s.opt.Models, ", ")))
	}
	if err := s.refusedBy(req.params, nil); err != nil {
		return unprocessable(err)
	}
	tenant := tenantOf(c)
	key := c.Request().Header.Get("Idempotency-Key")
	if err := validIdempotencyKey(key); err != nil {
		return err
	}
	nj := store.NewJob{
		ID: tasks.NewJobID(tenant, req.SessionID), Tenant: tenant, SessionID: req.SessionID, Queue: tasks.QueueName(req.Priority),
		BodyHash: req.hash(), CreatedAt: time.Now().UTC(),
	}
	if key != "" {
		nj.ID, nj.KeyHash = tasks.IdempotentJobID(tenant, key, req.SessionID), tasks.IdempotencyKeyHash(tenant, key)
	}
	sub, err := s.jobs.Submit(c.Request().Context(), nj, req.payload(nj))
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", jobURL(sub.Job.ID))
	resp := newSubmitResponse(sub.Job.ID, sub.Job.SessionID)
	if !sub.Replayed {
		return c.JSON(http.StatusAccepted, resp)
	}
	s.m.replays.Inc()
	c.Response().Header().Set("Idempotent-Replayed", "true")
	resp.Status = sub.Job.Status
	return c.JSON(http.StatusOK, resp)
}

// payload is the task payload of a submitted request.
func (r submitRequest) payload(nj store.NewJob) tasks.ChatPayload {
	return tasks.ChatPayload{
		JobID: nj.ID, Tenant: nj.Tenant, SessionID: nj.SessionID, Message: r.Message,
		Model: r.Model, Priority: r.Priority, Metadata: r.Metadata, SubmittedAt: nj.CreatedAt,
		ToolResults: r.results, Params: r.params,
	}
}

func newSubmitResponse(id, session string) submitResponse {
	return submitResponse{JobID: id, Status: store.StatusQueued, SessionID: session,
		StatusURL: jobURL(id), StreamURL: jobURL(id) + "/stream"}
}

func jobURL(id string) string { return "/api/v1/chat/jobs/" + id }

// maxWait bounds ?wait= long polls.
const maxWait = 60 * time.Second

func (s *Server) getJob(c echo.Context) error {
	wait, err := parseWait(c.QueryParam("wait"))
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	j, err := s.jobs.Get(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return err
	}
	if wait > 0 && !store.Terminal(j.Status) {
		if j, err = s.jobs.Wait(ctx, j, wait); err != nil {
			return err
		}
	}
	return c.JSON(http.StatusOK, renderJob(j))
}

func parseWait(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, nerr := strconv.Atoi(v)
		if nerr != nil {
			return 0, errf(http.StatusBadRequest, "invalid_query", "wait", "wait must be a duration such as 30s")
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 {
		return 0, errf(http.StatusBadRequest, "invalid_query", "wait", "wait must not be negative")
	}
	return min(d, maxWait), nil
}

type jobView struct {
	JobID      string          `json:"job_id"`
	SessionID  string          `json:"session_id"`
	Status     string          `json:"status"`
	CreatedAt  *time.Time      `json:"created_at"`
	StartedAt  *time.Time      `json:"started_at"`
	FinishedAt *time.Time      `json:"finished_at"`
	Attempts   int             `json:"attempts"`
	Result     *store.Result   `json:"result"`
	Usage      *store.Usage    `json:"usage"`
	Error      *store.JobError `json:"error"`
}

func renderJob(j store.Job) jobView {
	return jobView{
		JobID: j.ID, SessionID: j.SessionID, Status: j.Status,
		CreatedAt: timeOrNil(j.CreatedAt), StartedAt: timeOrNil(j.StartedAt), FinishedAt: timeOrNil(j.FinishedAt),
		Attempts: j.Attempts, Result: j.Result, Usage: j.Usage, Error: j.Error,
	}
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC().Truncate(time.Millisecond)
	return &t
}

func (s *Server) sessionMessages(c echo.Context) error {
	session := c.Param("session_id")
	if err := validSessionID(session); err != nil {
		return err
	}
	msgs, err := s.store.History(c.Request().Context(), tenantOf(c), session)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"session_id": session, "messages": msgs})
}
