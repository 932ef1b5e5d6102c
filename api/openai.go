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
	"sort"
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

// oaFields are the Chat Completions request fields and what becomes of
// each: carried to the provider, or answered here (stream, stream_options,
// n of 1, modalities of text, logprobs false). Any other field with a value
// is a 400 naming it: nothing is dropped silently.
var oaFields = []string{"model", "messages", "stream", "stream_options", "n", "modalities", "logprobs",
	"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
	"logit_bias", "reasoning_effort", "user", "metadata", "store", "tools", "tool_choice", "parallel_tool_calls", "response_format"}

type oaMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	Name       string          `json:"name"`
	ToolCalls  json.RawMessage `json:"tool_calls"`
	ToolCallID string          `json:"tool_call_id"`
	Refusal    *string         `json:"refusal"`
}

type oaRequest struct {
	Model         string      `json:"model"`
	Messages      []oaMessage `json:"messages"`
	Stream        bool        `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	N                   *int              `json:"n"`
	Modalities          []string          `json:"modalities"`
	Logprobs            *bool             `json:"logprobs"`
	MaxTokens           *int              `json:"max_tokens"`
	MaxCompletionTokens *int              `json:"max_completion_tokens"`
	Temperature         *float64          `json:"temperature"`
	TopP                *float64          `json:"top_p"`
	Stop                json.RawMessage   `json:"stop"`
	Seed                *int64            `json:"seed"`
	PresencePenalty     *float64          `json:"presence_penalty"`
	FrequencyPenalty    *float64          `json:"frequency_penalty"`
	LogitBias           map[string]int    `json:"logit_bias"`
	ReasoningEffort     string            `json:"reasoning_effort"`
	User                string            `json:"user"`
	Metadata            map[string]string `json:"metadata"`
	Store               *bool             `json:"store"`
	Tools               json.RawMessage   `json:"tools"`
	ToolChoice          json.RawMessage   `json:"tool_choice"`
	ParallelToolCalls   *bool             `json:"parallel_tool_calls"`
	ResponseFormat      json.RawMessage   `json:"response_format"`
}

func oaInvalid(param, msg string) *Error {
	return errf(http.StatusBadRequest, "invalid_request_error", param, msg)
}

// readOpenAIBody reads a /v1 request body: conversations, and images as
// data URLs, make them larger than the jobs API's.
func readOpenAIBody(c echo.Context) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), c.Request().Body, maxOpenAIBody))
	if err != nil {
		return nil, errf(http.StatusRequestEntityTooLarge, "request_too_large", "body", fmt.Sprintf("body must be at most %d bytes", maxOpenAIBody))
	}
	return body, nil
}

// readKnown decodes a /v1 body into dst after checking that it names no
// field outside known with a value: such a field is a 400 naming it.
func readKnown(c echo.Context, dst any, known []string, what string) error {
	body, err := readOpenAIBody(c)
	if err != nil {
		return err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return oaInvalid("body", "the body is not a valid "+what+" request: "+err.Error())
	}
	var unknown []string
	for k, v := range fields {
		if !slices.Contains(known, k) && !isNull(v) && string(bytes.TrimSpace(v)) != "[]" { // an empty list asks for nothing
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return oaInvalid(unknown[0], fmt.Sprintf("parameter %q is not supported by this server (supported: %s)", unknown[0], strings.Join(known, ", ")))
	}
	if err := json.Unmarshal(body, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return oaInvalid(te.Field, fmt.Sprintf("%s has the wrong type (%s)", te.Field, te.Value))
		}
		return oaInvalid("body", "the body is not a valid "+what+" request: "+err.Error())
	}
	return nil
}

// conversation validates the messages: text, images, tool calls and tool
// results.
func (r oaRequest) conversation() ([]tasks.ChatMessage, error) {
	if len(r.Messages) == 0 {
		return nil, oaInvalid("messages", "messages must not be empty")
	}
	out := make([]tasks.ChatMessage, 0, len(r.Messages))
	total := 0
	var images imageBudget
	for i, m := range r.Messages {
		param := fmt.Sprintf("messages[%d]", i)
		if m.Name != "" {
			return nil, oaInvalid(param+".name", "participant names are not supported by this server")
		}
		msg := tasks.ChatMessage{Role: m.Role}
		var err error
		switch m.Role {
		case "system", "developer":
			msg.Role = "system"
			msg.Content, err = textContent(m.Content, param+".content")
		case "user":
			var parts []tasks.ContentPart
			if parts, err = chatParts(m.Content, param+".content", &images); err == nil {
				msg.Content, msg.Parts = userContent(parts)
			}
		case "assistant":
			if msg.Content, err = textContent(m.Content, param+".content"); err == nil {
				msg.ToolCalls, err = parseToolCalls(m.ToolCalls, param+".tool_calls")
			}
			if m.Refusal != nil && msg.Content == "" {
				msg.Content = *m.Refusal // an earlier refusal is what the model said
			}
		case "tool":
			if m.ToolCallID == "" {
				return nil, oaInvalid(param+".tool_call_id", "a tool message needs the tool_call_id it answers")
			}
			msg.ToolCallID = m.ToolCallID
			msg.Content, err = textContent(m.Content, param+".content")
		default:
			return nil, oaInvalid(param+".role", fmt.Sprintf("role %q is not supported (system, developer, user, assistant, tool)", m.Role))
		}
		if err != nil {
			return nil, err
		}
		total += len(msg.Content)
		out = append(out, msg)
	}
	if total > 4*maxMessageBytes {
		return nil, oaInvalid("messages", fmt.Sprintf("messages hold more than %d bytes of text", 4*maxMessageBytes))
	}
	if err := lastTurn(out, "messages"); err != nil {
		return nil, err
	}
	return out, nil
}

// lastTurn checks that a conversation ends with something to answer: a
// user message, or tool results.
func lastTurn(msgs []tasks.ChatMessage, field string) error {
	last := msgs[len(msgs)-1]
	switch {
	case last.Role == "tool":
		return nil
	case last.Role != "user" || (strings.TrimSpace(last.Content) == "" && len(last.Parts) == 0):
		return oaInvalid(field, "the last message must be a non-empty user message or a tool result")
	}
	return nil
}

// textContent accepts a string, null or an array of text parts.
func textContent(raw json.RawMessage, field string) (string, error) {
	parts, err := chatParts(raw, field, nil)
	if err != nil {
		return "", err
	}
	text, _ := userContent(parts)
	return text, nil
}

// chatParts reads content: a string, null, or an array of text parts and
// (when images is not nil) image_url parts.
func chatParts(raw json.RawMessage, field string, images *imageBudget) ([]tasks.ContentPart, error) {
	if isNull(raw) {
		return nil, nil
	}
	raw = bytes.TrimSpace(raw)
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, oaInvalid(field, "content is not a valid string")
		}
		return []tasks.ContentPart{{Type: "text", Text: s}}, nil
	}
	var parts []struct {
		Type     string `json:"type"`
		Text     string `json:"text"`
		ImageURL struct {
			URL    string `json:"url"`
			Detail string `json:"detail"`
		} `json:"image_url"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return nil, oaInvalid(field, "content must be a string or an array of content parts")
	}
	out := make([]tasks.ContentPart, 0, len(parts))
	for j, p := range parts {
		pf := fmt.Sprintf("%s[%d]", field, j)
		switch {
		case p.Type == "text":
			out = append(out, tasks.ContentPart{Type: "text", Text: p.Text})
		case p.Type == "image_url" && images != nil:
			img, err := images.image(p.ImageURL.URL, p.ImageURL.Detail, pf+".image_url")
			if err != nil {
				return nil, err
			}
			out = append(out, img)
		default:
			allowed := "text"
			if images != nil {
				allowed = "text, image_url"
			}
			return nil, oaInvalid(pf+".type", fmt.Sprintf("content part type %q is not supported here (%s)", p.Type, allowed))
		}
	}
	return out, nil
}

// params validates the generation parameters, tools and response format.
func (r oaRequest) params() (*tasks.GenParams, error) {
	p := &tasks.GenParams{Temperature: r.Temperature, TopP: r.TopP, Seed: r.Seed, PresencePenalty: r.PresencePenalty,
		FrequencyPenalty: r.FrequencyPenalty, LogitBias: r.LogitBias, ReasoningEffort: r.ReasoningEffort, User: r.User,
		Metadata: r.Metadata, Store: r.Store, ParallelToolCalls: r.ParallelToolCalls}
	switch {
	case r.N != nil && *r.N != 1:
		return nil, oaInvalid("n", "only n=1 is supported")
	case r.Logprobs != nil && *r.Logprobs:
		return nil, oaInvalid("logprobs", "logprobs are not supported by this server")
	case len(r.Modalities) > 0 && !slices.Equal(r.Modalities, []string{"text"}):
		return nil, oaInvalid("modalities", `only ["text"] is supported`)
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
	switch r.ReasoningEffort {
	case "", "none", "minimal", "low", "medium", "high", "xhigh":
	default:
		return nil, oaInvalid("reasoning_effort", fmt.Sprintf("%q is not a reasoning effort (none, minimal, low, medium, high, xhigh)", r.ReasoningEffort))
	}
	if len(r.Metadata) > 16 {
		return nil, oaInvalid("metadata", "metadata holds at most 16 pairs")
	}
	var err error
	if p.Tools, err = parseTools(r.Tools, "tools"); err != nil {
		return nil, err
	}
	if p.ToolChoice, err = parseToolChoice(r.ToolChoice, "tool_choice", p.Tools); err != nil {
		return nil, err
	}
	if p.ResponseFormat, err = parseResponseFormat(r.ResponseFormat, "response_format", false); err != nil {
		return nil, err
	}
	return p, nil
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
