package api

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
)

// The OpenAI-compatible front door: POST /v1/chat/completions runs the request
// as a job through the queue (so backlog, breakers, fallbacks, limits and
// metrics all apply) and answers in OpenAI's wire format, streamed or not.
// Existing OpenAI SDKs use the fleet by changing only their base URL.

// registerOpenAI adds /v1/chat/completions and /v1/models.
func (s *Server) registerOpenAI(e *echo.Echo) {
	mw := []echo.MiddlewareFunc{openAIErrors, auth(s.keys), s.gate.middleware, s.rate.middleware}
	e.POST("/v1/chat/completions", s.chatCompletions, append(mw, s.bytes.limit(maxOpenAIBody))...)
	e.GET("/v1/models", s.listModels, mw...)
	e.GET("/v1/models/*", s.getModel, mw...)
}

// openAIErrors renders every error of the front door in OpenAI's shape:
// {"error":{"message","type","param","code"}}.
func openAIErrors(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		err := next(c)
		if err == nil || c.Response().Committed {
			return err
		}
		var ae *Error
		switch {
		case errors.As(err, &ae):
		case lifecycleError(c, err) != nil:
			ae = lifecycleError(c, err)
		default:
			return err // the shared handler logs it and answers 500
		}
		typ := map[int]string{
			http.StatusUnauthorized: "authentication_error", http.StatusNotFound: "not_found_error",
			http.StatusTooManyRequests: "rate_limit_error", http.StatusServiceUnavailable: "server_error",
		}[ae.Status]
		if typ == "" {
			typ = "invalid_request_error"
		}
		if ae.Code == "insufficient_quota" {
			typ = ae.Code // OpenAI's own type for a spent quota
		}
		var param any
		if ae.Field != "" {
			param = ae.Field
		}
		return c.JSON(ae.Status, map[string]any{"error": map[string]any{"message": ae.Message, "type": typ, "param": param, "code": ae.Code}})
	}
}

// chatJob validates a Chat Completions request and builds the payload of
// its job nj.
func (s *Server) chatJob(r oaRequest, nj store.NewJob, priority string) (tasks.ChatPayload, error) {
	if err := validShared(r.Model, r.User, r.Metadata); err != nil {
		return tasks.ChatPayload{}, err
	}
	msgs, err := r.conversation()
	if err != nil {
		return tasks.ChatPayload{}, err
	}
	params, err := r.params()
	if err != nil {
		return tasks.ChatPayload{}, err
	}
	if !s.served(r.Model) {
		return tasks.ChatPayload{}, s.unknownModel(r.Model, true)
	}
	if err := s.refusedBy(r.Model, params, nil); err != nil {
		return tasks.ChatPayload{}, err
	}
	return tasks.ChatPayload{JobID: nj.ID, Tenant: nj.Tenant, SessionID: nj.SessionID, Message: msgs[len(msgs)-1].Content,
		Model: r.Model, Priority: priority, SubmittedAt: nj.CreatedAt, Messages: msgs, Params: params}, nil
}

func (s *Server) chatCompletions(c echo.Context) error {
	var r oaRequest
	if err := readKnown(c, &r, oaFields, "Chat Completions"); err != nil {
		return err
	}
	// Each request is its own one-job session: the conversation comes with it.
	session := "openai-" + tasks.NewSessionID()
	id := tasks.NewJobID(tenantOf(c), session)
	nj := store.NewJob{ID: id, Tenant: tenantOf(c), SessionID: session,
		Queue: tasks.QueueName(tasks.PriorityNormal), CreatedAt: time.Now().UTC()}
	p, err := s.chatJob(r, nj, tasks.PriorityNormal)
	if err != nil {
		return err
	}
	// The request is held until the answer (streamed or not): it counts
	// against the tenant's cap of held connections.
	renew, release, err := s.openStream(c, nj.Tenant)
	if err != nil {
		return err
	}
	defer release()
	if _, err := s.jobs.Submit(c.Request().Context(), nj, p); err != nil {
		return err
	}
	bodyReleased(c)

	// Chunks before the last name the model asked for; a fallback's name is
	// known only when it has answered (the final chunk and a whole answer).
	model := cmp.Or(r.Model, s.defaultModel())
	sink := &oaSink{res: c.Response(), id: "chatcmpl-" + strings.TrimPrefix(id, "job_"), model: model,
		created: nj.CreatedAt.Unix(), stream: r.Stream, usage: r.StreamOptions != nil && r.StreamOptions.IncludeUsage}
	if r.Stream {
		s.m.streamClients.Inc()
		defer s.m.streamClients.Dec()
	}
	ctx := c.Request().Context()
	if r.Stream {
		err = stream.Follow(ctx, s.hub, s.store, id, 0, s.opt.Heartbeat, leasedSink{sink, renew})
	} else { // the answer goes out whole: the worker need not hurry its tokens
		err = stream.AwaitFinal(ctx, s.hub, s.store, id, s.opt.Heartbeat, leasedSink{sink, renew})
	}
	if !sink.final || sink.cut {
		// The client left (it cannot come back to this request), its stream
		// ended with upstream_retry (it sends the request again), or following
		// failed: the job has no one to answer, so it stops.
		if j, gerr := s.store.Get(context.WithoutCancel(ctx), id); gerr == nil && !store.Terminal(j.Status) {
			if _, cerr := s.jobs.Cancel(context.WithoutCancel(ctx), j, "the OpenAI-compatible client disconnected"); cerr != nil && !errors.Is(cerr, jobs.ErrFinished) {
				zerolog.Ctx(ctx).Warn().Err(cerr).Str("job_id", id).Msg("could not cancel the abandoned job")
			}
		}
	}
	if err != nil && !errors.Is(err, errStreamCut) && !c.Response().Committed {
		return err
	}
	if !r.Stream && sink.final {
		return sink.answer(c)
	}
	return nil
}
