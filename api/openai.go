package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

type oaMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type oaRequest struct {
	Model         string      `json:"model"`
	Messages      []oaMessage `json:"messages"`
	Stream        bool        `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	Stop                json.RawMessage `json:"stop"`
	User                string          `json:"user"`
	N                   *int            `json:"n"`
}

func oaInvalid(param, msg string) *Error {
	return errf(http.StatusBadRequest, "invalid_request_error", param, msg)
}

// readOpenAIBody reads a /v1 request body (conversations make them larger
// than the jobs API's).
func readOpenAIBody(c echo.Context) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), c.Request().Body, 4*maxBodyBytes))
	if err != nil {
		return nil, errf(http.StatusRequestEntityTooLarge, "request_too_large", "body", fmt.Sprintf("body must be at most %d bytes", 4*maxBodyBytes))
	}
	return body, nil
}

// readOpenAI decodes a Chat Completions request. Unlike the jobs API it
// ignores fields it does not know: SDKs send many optional ones.
func readOpenAI(c echo.Context) (oaRequest, error) {
	var r oaRequest
	body, err := readOpenAIBody(c)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, oaInvalid("body", "the body is not a valid Chat Completions request: "+err.Error())
	}
	return r, nil
}

// conversation validates the messages and flattens content parts to text.
func (r oaRequest) conversation() ([]tasks.ChatMessage, error) {
	if len(r.Messages) == 0 {
		return nil, oaInvalid("messages", "messages must not be empty")
	}
	out := make([]tasks.ChatMessage, 0, len(r.Messages))
	total := 0
	for i, m := range r.Messages {
		param := fmt.Sprintf("messages[%d]", i)
		role := m.Role
		switch role {
		case "system", "user", "assistant":
		case "developer":
			role = "system"
		default:
			return nil, oaInvalid(param+".role", fmt.Sprintf("role %q is not supported (system, developer, user, assistant)", m.Role))
		}
		text, err := contentText(m.Content)
		if err != nil {
			return nil, oaInvalid(param+".content", err.Error())
		}
		total += len(text)
		out = append(out, tasks.ChatMessage{Role: role, Content: text})
	}
	if total > 4*maxMessageBytes {
		return nil, oaInvalid("messages", fmt.Sprintf("messages hold more than %d bytes of text", 4*maxMessageBytes))
	}
	if out[len(out)-1].Role != "user" || strings.TrimSpace(out[len(out)-1].Content) == "" {
		return nil, oaInvalid("messages", "the last message must be a non-empty user message")
	}
	return out, nil
}

// contentText accepts a string or an array of text parts.
func contentText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] == 'n' {
		return "", nil
	}
	var s string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errors.New("content is not a valid string")
		}
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("content must be a string or an array of content parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			return "", fmt.Errorf("content part type %q is not supported (text only)", p.Type)
		}
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

func (r oaRequest) params() (*tasks.GenParams, error) {
	p := &tasks.GenParams{Temperature: r.Temperature, TopP: r.TopP}
	switch {
	case r.MaxCompletionTokens != nil:
		p.MaxTokens = *r.MaxCompletionTokens
	case r.MaxTokens != nil:
		p.MaxTokens = *r.MaxTokens
	}
	if p.MaxTokens < 0 {
		return nil, oaInvalid("max_tokens", "max_tokens must not be negative")
	}
	if len(r.Stop) > 0 && string(r.Stop) != "null" {
		var one string
		if json.Unmarshal(r.Stop, &one) == nil {
			p.Stop = []string{one}
		} else if json.Unmarshal(r.Stop, &p.Stop) != nil || len(p.Stop) > 4 {
			return nil, oaInvalid("stop", "stop must be a string or up to 4 strings")
		}
	}
	return p, nil
}

func (s *Server) chatCompletions(c echo.Context) error {
	r, err := readOpenAI(c)
	if err != nil {
		return err
	}
	msgs, err := r.conversation()
	if err != nil {
		return err
	}
	if r.N != nil && *r.N != 1 {
		return oaInvalid("n", "only n=1 is supported")
	}
	if r.Model != "" && len(s.opt.Models) > 0 && !slices.Contains(s.opt.Models, r.Model) {
		return errf(http.StatusNotFound, "model_not_found", "model", fmt.Sprintf("the model %q does not exist or you do not have access to it", r.Model))
	}
	params, err := r.params()
	if err != nil {
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
		if err := s.chunk(map[string]any{}, "stop", nil); err != nil {
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
	return c.JSON(http.StatusOK, map[string]any{
		"id": s.id, "object": "chat.completion", "created": s.created, "model": s.model,
		"choices": []any{map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": s.doneContent()}, "finish_reason": "stop", "logprobs": nil}},
		"usage":   s.usageObject(),
	})
}

func (s *oaSink) doneContent() string {
	if s.done.Result == nil {
		return ""
	}
	return s.done.Result.Content
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
