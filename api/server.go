// Package api serves chatfleet's HTTP API: it validates requests, writes job
// records and enqueues tasks. It never calls an LLM.
package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
)

// Options configures the API.
type Options struct {
	APIKeys    map[[32]byte]string // SHA-256 of a key -> tenant
	MaxRetries int
	Retention  time.Duration
	Heartbeat  time.Duration // SSE comment heartbeat
	// Closing ends the streams served off their connections; cancel it when
	// shutdown begins (default: never).
	Closing    context.Context
	Registerer prometheus.Registerer
	// TenantRate and TenantBurst limit each tenant's requests per second,
	// across every API process (0: unlimited).
	TenantRate, TenantBurst int
	Models                  []string // models a job may ask for; empty: any
	DefaultModel            string   // what /v1/models lists when Models is empty
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
	store *store.Store
	queue *asynq.Client
	insp  *asynq.Inspector
	hub   *stream.Hub
	keys  *keyring
	rate  *tenantLimiter
	opt   Options
	m     *metrics
}

// New returns the API.
func New(st *store.Store, queue *asynq.Client, insp *asynq.Inspector, hub *stream.Hub, opt Options) *Server {
	if opt.Heartbeat <= 0 {
		opt.Heartbeat = 15 * time.Second
	}
	if opt.Closing == nil {
		opt.Closing = context.Background()
	}
	return &Server{store: st, queue: queue, insp: insp, hub: hub, keys: newKeyring(opt.APIKeys), opt: opt, m: newMetrics(opt.Registerer),
		rate: newTenantLimiter(st.Redis(), opt.TenantRate, opt.TenantBurst)}
}

// NewEcho returns an echo instance with chatfleet's error shape, request logs
// and metrics, and panic recovery. Routes are added by Server.Register and the
// health package.
func NewEcho(log zerolog.Logger, reg prometheus.Registerer) *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = handleError
	e.Use(requestLog(log, newHTTPMetrics(reg)))
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisableStackAll: true}))
	return e
}

// Register adds the job routes.
func (s *Server) Register(e *echo.Echo) {
	// Middleware per route, not per group: a group's catch-all would turn a
	// wrong method into 404 instead of 405.
	mw := []echo.MiddlewareFunc{auth(s.keys), s.rate.middleware}
	e.POST("/api/v1/chat/jobs", s.submit, mw...)
	e.GET("/api/v1/chat/jobs/:id", s.getJob, mw...)
	e.GET("/api/v1/chat/jobs/:id/stream", s.streamJob, mw...)
	e.POST("/api/v1/chat/jobs/:id/cancel", s.cancelJob, mw...)
	e.GET("/api/v1/sessions/:session_id/messages", s.sessionMessages, mw...)
	s.registerOpenAI(e)
}

// submitTimeout bounds the Redis work of one submit.
const submitTimeout = 5 * time.Second

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
	tenant := tenantOf(c)
	key := c.Request().Header.Get("Idempotency-Key")
	if err := validIdempotencyKey(key); err != nil {
		return err
	}
	id := tasks.NewJobID()
	if key != "" {
		id = tasks.IdempotentJobID(tenant, key)
	}
	nj := store.NewJob{
		ID: id, Tenant: tenant, SessionID: req.SessionID, Queue: tasks.QueueName(req.Priority),
		BodyHash: req.hash(), CreatedAt: time.Now().UTC(),
	}
	// Record, enqueue and undo run to the end even if the client hangs up
	// half-way, so that no record is left without its task.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), submitTimeout)
	defer cancel()
	created, existing, err := s.accept(ctx, c, nj, req.payload(nj))
	if err != nil {
		return err
	}
	if !created {
		return s.replay(ctx, c, req, nj, existing)
	}
	c.Response().Header().Set("Location", jobURL(id))
	return c.JSON(http.StatusAccepted, newSubmitResponse(id, req.SessionID))
}

// accept records a new job and enqueues its task, undoing the record if the
// enqueue fails, so nothing half-written stays behind. When the id exists it
// returns created=false and the existing record.
func (s *Server) accept(ctx context.Context, c echo.Context, nj store.NewJob, p tasks.ChatPayload) (bool, store.Job, error) {
	created, existing, err := s.store.Create(ctx, nj)
	if errors.Is(err, store.ErrTooManyJobs) {
		c.Response().Header().Set("Retry-After", retryAfterSeconds)
		return false, store.Job{}, errf(http.StatusTooManyRequests, "too_many_jobs", "", "this tenant has as many unfinished jobs as it may have; wait for some to finish")
	}
	if err != nil || !created {
		return false, existing, err
	}
	if err := s.enqueue(ctx, p); err != nil {
		undo, cancelUndo := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancelUndo()
		if derr := s.store.Delete(undo, nj); derr != nil {
			zerolog.Ctx(ctx).Warn().Err(derr).Str("job_id", nj.ID).Msg("could not undo job record after failed enqueue")
		}
		return false, store.Job{}, err
	}
	return true, store.Job{}, nil
}

// replay answers a repeated Idempotency-Key: the same body gets the same job,
// another body is a conflict.
func (s *Server) replay(ctx context.Context, c echo.Context, req submitRequest, nj store.NewJob, existing store.Job) error {
	if existing.Tenant != nj.Tenant || existing.BodyHash != nj.BodyHash {
		return errf(http.StatusConflict, "idempotency_conflict", "Idempotency-Key",
			"this Idempotency-Key was already used with a different request body")
	}
	if existing.Status == store.StatusQueued {
		// Make sure the first request's enqueue happened; asynq refuses a second
		// task with the same id, so this never makes two jobs.
		nj.CreatedAt = existing.CreatedAt
		if err := s.enqueue(ctx, req.payload(nj)); err != nil {
			return err
		}
	}
	s.m.replays.Inc()
	c.Response().Header().Set("Idempotent-Replayed", "true")
	c.Response().Header().Set("Location", jobURL(existing.ID))
	resp := newSubmitResponse(existing.ID, existing.SessionID)
	resp.Status = existing.Status
	return c.JSON(http.StatusOK, resp)
}

// payload is the task payload of a submitted request.
func (r submitRequest) payload(nj store.NewJob) tasks.ChatPayload {
	return tasks.ChatPayload{
		JobID: nj.ID, Tenant: nj.Tenant, SessionID: nj.SessionID, Message: r.Message,
		Model: r.Model, Priority: r.Priority, Metadata: r.Metadata, SubmittedAt: nj.CreatedAt,
	}
}

func (s *Server) enqueue(ctx context.Context, p tasks.ChatPayload) error {
	task, err := tasks.NewChatTask(p, s.opt.MaxRetries, s.opt.Retention)
	if err != nil {
		return err
	}
	_, err = s.queue.EnqueueContext(ctx, task)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return errors.Join(store.ErrUnavailable, err)
	}
	return nil
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
	j, err := s.lookup(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return err
	}
	if !store.Terminal(j.Status) {
		if j, err = s.store.Reconcile(ctx, j); err != nil {
			return err
		}
	}
	if wait > 0 && !store.Terminal(j.Status) {
		if j, err = s.awaitFinish(ctx, j, wait); err != nil {
			return err
		}
	}
	return c.JSON(http.StatusOK, renderJob(j))
}

// lookup finds a tenant's job; another tenant's job is not found.
func (s *Server) lookup(ctx context.Context, id, tenant string) (store.Job, error) {
	notFound := errf(http.StatusNotFound, "not_found", "id", "no such job")
	if !tasks.ValidJobID(id) {
		return store.Job{}, notFound
	}
	j, err := s.store.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && j.Tenant != tenant) {
		return store.Job{}, notFound
	}
	return j, err
}

// awaitFinish polls the record until it is terminal, the wait ends or the
// client leaves, backing off from 10 ms to 250 ms.
func (s *Server) awaitFinish(ctx context.Context, j store.Job, wait time.Duration) (store.Job, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	backoff := 10 * time.Millisecond
	for !store.Terminal(j.Status) {
		select {
		case <-ctx.Done():
			return j, nil
		case <-timer.C:
			return j, nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 250*time.Millisecond)
		next, err := s.store.Get(ctx, j.ID)
		if err != nil {
			return j, err
		}
		j = next
	}
	return j, nil
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
