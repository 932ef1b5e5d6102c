package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
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
	mw := []echo.MiddlewareFunc{openAIErrors, auth(s.keys), s.rate.middleware}
	e.POST("/v1/chat/completions", s.chatCompletions, mw...)
	e.GET("/v1/models", s.listModels, mw...)
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
		var param any
		if ae.Field != "" {
			param = ae.Field
		}
		return c.JSON(ae.Status, map[string]any{"error": map[string]any{"message": ae.Message, "type": typ, "param": param, "code": ae.Code}})
	}
}

func (s *Server) chatCompletions(c echo.Context) error {
	var r oaRequest
	if err := readKnown(c, &r, oaFields, "Chat Completions"); err != nil {
		return err
	}
	msgs, err := r.conversation()
	if err != nil {
		return err
	}
	params, err := r.params()
	if err != nil {
		return err
	}
	if r.Model != "" && len(s.opt.Models) > 0 && !slices.Contains(s.opt.Models, r.Model) {
		return errf(http.StatusNotFound, "model_not_found", "model", fmt.Sprintf("the model %q does not exist or you do not have access to it", r.Model))
	}
	if err := s.refusedBy(params, nil); err != nil {
		return err
	}
	// Each request is its own one-job session: the conversation comes with it.
	session := "openai-" + tasks.NewSessionID()
	id := tasks.NewJobID(tenantOf(c), session)
	nj := store.NewJob{ID: id, Tenant: tenantOf(c), SessionID: session,
		Queue: tasks.QueueName(tasks.PriorityNormal), CreatedAt: time.Now().UTC()}
	p := tasks.ChatPayload{JobID: id, Tenant: nj.Tenant, SessionID: nj.SessionID, Message: msgs[len(msgs)-1].Content,
		Model: r.Model, Priority: tasks.PriorityNormal, SubmittedAt: nj.CreatedAt, Messages: msgs, Params: params}
	renew, release := func() {}, func() {}
	if r.Stream { // a streamed answer counts against the tenant's stream cap
		if renew, release, err = s.openStream(c, nj.Tenant); err != nil {
			return err
		}
	}
	defer release()
	if _, err := s.jobs.Submit(c.Request().Context(), nj, p); err != nil {
		return err
	}

	model := r.Model
	if model == "" {
		model = "default"
	}
	sink := &oaSink{res: c.Response(), id: "chatcmpl-" + strings.TrimPrefix(id, "job_"), model: model,
		created: nj.CreatedAt.Unix(), stream: r.Stream, usage: r.StreamOptions != nil && r.StreamOptions.IncludeUsage}
	if r.Stream {
		s.m.streamClients.Inc()
		defer s.m.streamClients.Dec()
	}
	ctx := c.Request().Context()
	err = stream.Follow(ctx, s.hub, s.store, id, 0, s.opt.Heartbeat, leasedSink{sink, renew})
	if !sink.final {
		// The client left (it cannot come back to this request) or following
		// failed: the job has no one to answer, so it stops.
		if j, gerr := s.store.Get(context.WithoutCancel(ctx), id); gerr == nil && !store.Terminal(j.Status) {
			if _, cerr := s.jobs.Cancel(context.WithoutCancel(ctx), j, "the OpenAI-compatible client disconnected"); cerr != nil && !errors.Is(cerr, jobs.ErrFinished) {
				zerolog.Ctx(ctx).Warn().Err(cerr).Str("job_id", id).Msg("could not cancel the abandoned job")
			}
		}
	}
	if err != nil && !c.Response().Committed {
		return err
	}
	if !r.Stream && sink.final {
		return sink.answer(c)
	}
	return nil
}

// oaSink turns a job's events into chat.completion.chunk events, or collects
// them into one chat.completion.
type oaSink struct {
	res     *echo.Response
	id      string
	model   string
	created int64
	stream  bool
	usage   bool

	opened  bool
	final   bool
	text    strings.Builder
	calls   map[int]bool // tool calls whose first fragment went out
	done    store.DoneEvent
	failure *store.JobError
}

func (s *oaSink) Open() error {
	if !s.stream {
		return nil
	}
	sseHead(s.res)
	s.opened = true
	return s.chunk(map[string]any{"role": "assistant", "content": ""}, nil, nil)
}

func (s *oaSink) Heartbeat() error {
	if !s.stream {
		return nil
	}
	return sseHeartbeat(s.res)
}

func (s *oaSink) Event(ev store.Event) error {
	p, err := ev.Decode()
	if err != nil {
		return err
	}
	switch p := p.(type) {
	case store.TokenEvent:
		s.text.WriteString(p.Delta)
		if s.stream {
			return s.chunk(map[string]any{"content": p.Delta}, nil, nil)
		}
	case store.ToolCallEvent:
		if !s.stream {
			return nil // the done event's result holds the whole calls
		}
		// The first fragment of a call names it; later ones carry arguments.
		call := map[string]any{"index": p.Index, "function": map[string]any{"arguments": p.Arguments}}
		if s.calls == nil {
			s.calls = map[int]bool{}
		}
		if !s.calls[p.Index] {
			s.calls[p.Index] = true
			call["id"], call["type"] = p.ID, "function"
			call["function"].(map[string]any)["name"] = p.Name
		}
		return s.chunk(map[string]any{"tool_calls": []any{call}}, nil, nil)
	case store.RetryEvent:
		// OpenAI's format cannot take back text already sent: a streamed
		// answer ends with an error the client can retry on; a collected one
		// simply starts over.
		if s.stream {
			s.final = true
			s.failure = &store.JobError{Code: "upstream_retry", Message: "the provider failed mid-reply; retry the request"}
			return s.streamError()
		}
		s.text.Reset()
	case store.DoneEvent:
		s.final = true
		s.done = p
		if p.Result != nil && p.Result.Model != "" {
			s.model = p.Result.Model
		}
		if !s.stream {
			return nil
		}
		if err := s.chunk(map[string]any{}, s.finishReason(), nil); err != nil {
			return err
		}
		if s.usage {
			if err := s.chunk(nil, nil, s.usageObject()); err != nil {
				return err
			}
		}
		return s.doneLine()
	case store.ErrorEvent, store.CanceledEvent:
		s.final = true
		s.failure = &store.JobError{Code: "canceled", Message: "the job was canceled"}
		if e, ok := p.(store.ErrorEvent); ok && e.Error != nil {
			s.failure = e.Error
		}
		if s.stream {
			return s.streamError()
		}
	}
	return nil
}

func (s *oaSink) usageObject() map[string]int {
	var u store.Usage
	if s.done.Usage != nil {
		u = *s.done.Usage
	}
	return map[string]int{"prompt_tokens": u.PromptTokens, "completion_tokens": u.CompletionTokens, "total_tokens": u.PromptTokens + u.CompletionTokens}
}

func (s *oaSink) chunk(delta map[string]any, finish any, usage map[string]int) error {
	c := map[string]any{"id": s.id, "object": "chat.completion.chunk", "created": s.created, "model": s.model}
	if delta != nil {
		c["choices"] = []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}
	} else {
		c["choices"] = []any{}
	}
	if usage != nil {
		c["usage"] = usage
	}
	return s.write(c)
}

func (s *oaSink) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.res, "data: %s\n\n", b); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

func (s *oaSink) streamError() error {
	if err := s.write(map[string]any{"error": map[string]any{"message": s.failure.Message, "type": "server_error", "param": nil, "code": s.failure.Code}}); err != nil {
		return err
	}
	return s.doneLine()
}

func (s *oaSink) doneLine() error {
	if _, err := s.res.Write([]byte("data: [DONE]\n\n")); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

// answer is the non-streamed reply: a chat.completion or an error.
func (s *oaSink) answer(c echo.Context) error {
	if s.failure != nil {
		status := http.StatusBadGateway
		if s.failure.Code == "canceled" {
			status = http.StatusConflict
		}
		return c.JSON(status, map[string]any{"error": map[string]any{"message": s.failure.Message, "type": "server_error", "param": nil, "code": s.failure.Code}})
	}
	msg := map[string]any{"role": "assistant", "content": nil, "refusal": nil}
	if res := s.done.Result; res != nil {
		if res.Content != "" || len(res.ToolCalls) == 0 {
			msg["content"] = res.Content
		}
		if len(res.ToolCalls) > 0 {
			msg["tool_calls"] = res.ToolCalls
		}
	}
	return c.JSON(http.StatusOK, map[string]any{
		"id": s.id, "object": "chat.completion", "created": s.created, "model": s.model,
		"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": s.finishReason(), "logprobs": nil}},
		"usage":   s.usageObject(),
	})
}

// finishReason is the reply's: stop, length or tool_calls.
func (s *oaSink) finishReason() string {
	if r := s.done.Result; r != nil && r.FinishReason != "" {
		return r.FinishReason
	}
	return "stop"
}

func (s *Server) listModels(c echo.Context) error {
	models := s.opt.Models
	if len(models) == 0 {
		models = []string{s.opt.DefaultModel}
	}
	data := make([]any, 0, len(models))
	for _, m := range models {
		data = append(data, map[string]any{"id": m, "object": "model", "created": 0, "owned_by": "chatfleet"})
	}
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": data})
}
