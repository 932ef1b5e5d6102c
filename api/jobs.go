package api

import (
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
	"github.com/chatfleet/chatfleet/webhooks"
)

// The jobs API: submit, read (and long-poll), cancel, a session's messages.
// Its stream lives in stream.go; the OpenAI-compatible doors in openai.go and
// responses.go.

func (s *Server) submit(c echo.Context) error {
	var req submitRequest
	if err := readJSON(c, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	if !s.served(req.Model) {
		return s.unknownModel(req.Model, false)
	}
	if err := s.refusedBy(req.Model, req.params, nil); err != nil {
		return unprocessable(err)
	}
	tenant := tenantOf(c)
	if req.WebhookURL != "" && !s.opt.Webhooks.HasSecret(tenant) {
		return invalid("webhook_url", "this tenant has no webhook secret to sign with (an entry for it in CHATFLEET_WEBHOOKS_FILE)")
	}
	if req.WebhookURL != "" && s.opt.WebhookHTTPSOnly {
		if u, err := url.Parse(req.WebhookURL); err != nil || u.Scheme != "https" {
			return invalid("webhook_url", "must be an https:// URL")
		}
	}
	key := c.Request().Header.Get("Idempotency-Key")
	if err := validIdempotencyKey(key); err != nil {
		return err
	}
	nj := store.NewJob{
		ID: tasks.NewJobID(tenant, req.SessionID), Tenant: tenant, SessionID: req.SessionID, Queue: tasks.QueueName(req.Priority),
		BodyHash: req.hash(), CreatedAt: time.Now().UTC(),
	}
	if req.WebhookURL != "" || s.opt.Webhooks.Wants(tenant, webhooks.KindJob) {
		nj.Webhook = webhooks.Spec{Kind: webhooks.KindJob, URL: req.WebhookURL}.Encode()
	}
	if key != "" {
		nj.ID, nj.KeyHash = tasks.IdempotentJobID(tenant, key, req.SessionID), tasks.IdempotencyKeyHash(tenant, key)
	}
	sub, err := s.jobs.Submit(c.Request().Context(), nj, req.payload(nj))
	if err != nil {
		return err
	}
	bodyReleased(c)
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
		// A long poll holds its connection: it counts against the tenant's
		// cap of held connections, renewed while it waits.
		renew, release, err := s.openStream(c, j.Tenant)
		if err != nil {
			return err
		}
		stop := renewEvery(s.opt.Heartbeat, renew)
		j, err = s.jobs.Wait(ctx, j, wait)
		stop()
		release()
		if err != nil {
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
	// Webhooks are the job's deliveries when it has any: one per receiver.
	Webhooks []webhooks.Delivery `json:"webhooks,omitempty"`
	// TraceID is the job's OpenTelemetry trace, when tracing is on.
	TraceID string `json:"trace_id,omitempty"`
}

func renderJob(j store.Job) jobView {
	return jobView{
		JobID: j.ID, SessionID: j.SessionID, Status: j.Status,
		CreatedAt: timeOrNil(j.CreatedAt), StartedAt: timeOrNil(j.StartedAt), FinishedAt: timeOrNil(j.FinishedAt),
		Attempts: j.Attempts, Result: j.Result, Usage: j.Usage, Error: j.Error, Webhooks: webhooks.Deliveries(j), TraceID: j.TraceID,
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

// cancelJob stops a job: a queued one never runs, an active one has its
// provider call aborted and is not retried; a finished one is a conflict.
func (s *Server) cancelJob(c echo.Context) error {
	ctx := c.Request().Context()
	j, err := s.jobs.Get(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return err
	}
	if j, err = s.jobs.Cancel(ctx, j, "canceled on request"); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, renderJob(j))
}
