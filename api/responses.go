package api

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
)

// The OpenAI Responses API over the fleet: a response is a job of its own
// one-job session whose payload carries the whole conversation (earlier
// inputs and outputs of its previous_response_id chain, then its input), so a
// response that branches from an older one sees exactly its own chain. With
// background it is durable: poll it, or stream it and resume with
// starting_after from any API process.

func (s *Server) registerResponses(e *echo.Echo) {
	mw := []echo.MiddlewareFunc{openAIErrors, auth(s.keys), s.rate.middleware}
	e.POST("/v1/responses", s.createResponse, mw...)
	e.GET("/v1/responses/:id", s.getResponse, mw...)
	e.POST("/v1/responses/:id/cancel", s.cancelResponse, mw...)
	e.DELETE("/v1/responses/:id", s.deleteResponse, mw...)
	e.GET("/v1/responses/:id/input_items", s.responseInputItems, mw...)
}

// respParams are the request fields this server takes: carried to the
// provider (input, instructions, tools, tool_choice, parallel_tool_calls,
// text.format, reasoning.effort, max_output_tokens, temperature, top_p,
// user) or kept here (previous_response_id, background, stream, store,
// metadata). Any other field with a value is a 400 naming it.
var respParams = []string{"model", "input", "instructions", "previous_response_id", "background", "stream",
	"store", "max_output_tokens", "temperature", "top_p", "metadata", "user", "tools", "tool_choice",
	"parallel_tool_calls", "text", "reasoning", "truncation"}

type respRequest struct {
	Model              string            `json:"model"`
	Input              json.RawMessage   `json:"input"`
	Instructions       string            `json:"instructions"`
	PreviousResponseID string            `json:"previous_response_id"`
	Background         bool              `json:"background"`
	Stream             bool              `json:"stream"`
	Store              *bool             `json:"store"`
	MaxOutputTokens    *int              `json:"max_output_tokens"`
	Temperature        *float64          `json:"temperature"`
	TopP               *float64          `json:"top_p"`
	Metadata           map[string]string `json:"metadata"`
	User               string            `json:"user"`
	Tools              json.RawMessage   `json:"tools"`
	ToolChoice         json.RawMessage   `json:"tool_choice"`
	ParallelToolCalls  *bool             `json:"parallel_tool_calls"`
	Text               json.RawMessage   `json:"text"`
	Reasoning          json.RawMessage   `json:"reasoning"`
	Truncation         string            `json:"truncation"`
}

// inputItem is one item of a response's input, as input_items lists it: a
// message, a function_call or a function_call_output.
type inputItem map[string]any

// respRecord is what the response hash holds.
type respRecord struct {
	ID, Tenant, Model, Instructions, Previous, User string
	Background, Store                               bool
	CreatedAt                                       int64
	Metadata                                        map[string]string
	Input                                           []inputItem
	Conversation                                    []tasks.ChatMessage // earlier turns and this input, without instructions
	MaxOutputTokens                                 *int
	Temperature, TopP                               *float64
	Params                                          *tasks.GenParams `json:",omitempty"` // tools, tool choice, text format, reasoning
}

func respID(jobID string) string { return "resp_" + strings.TrimPrefix(jobID, "job_") }
func jobOfResp(id string) string { return "job_" + strings.TrimPrefix(id, "resp_") }
func msgID(jobID string) string  { return "msg_" + strings.TrimPrefix(jobID, "job_") }
func fcID(jobID string, k int) string {
	return fmt.Sprintf("fc_%s_%d", strings.TrimPrefix(jobID, "job_"), k)
}
func validRespID(id string) bool {
	return strings.HasPrefix(id, "resp_") && tasks.ValidJobID(jobOfResp(id))
}

func readResponseRequest(c echo.Context) (respRequest, error) {
	var r respRequest
	err := readKnown(c, &r, respParams, "Responses")
	return r, err
}

// respFieldNames are the Responses names of the Chat Completions fields
// a provider may refuse.
var respFieldNames = map[string]string{"response_format": "text.format", "reasoning_effort": "reasoning.effort",
	"metadata": "metadata", "store": "store"}

// params validates the generation parameters, tools, text format and
// reasoning of a Responses request.
func (r respRequest) params() (*tasks.GenParams, error) {
	p := &tasks.GenParams{Temperature: r.Temperature, TopP: r.TopP, User: r.User, ParallelToolCalls: r.ParallelToolCalls}
	if r.Truncation != "" && r.Truncation != "disabled" {
		return nil, oaInvalid("truncation", `only "disabled" is supported: a conversation too long for the model fails`)
	}
	if r.MaxOutputTokens != nil {
		p.MaxTokens = *r.MaxOutputTokens
	}
	var err error
	if p.Tools, err = respTools(r.Tools); err != nil {
		return nil, err
	}
	if p.ToolChoice, err = parseToolChoice(r.ToolChoice, "tool_choice", p.Tools); err != nil {
		return nil, err
	}
	if !isNull(r.Text) {
		var text struct {
			Format    json.RawMessage `json:"format"`
			Verbosity *string         `json:"verbosity"`
		}
		if err := json.Unmarshal(r.Text, &text); err != nil {
			return nil, oaInvalid("text", "text must be an object with a format")
		}
		if text.Verbosity != nil {
			return nil, oaInvalid("text.verbosity", "text.verbosity is not supported by this server")
		}
		if p.ResponseFormat, err = parseResponseFormat(text.Format, "text.format", true); err != nil {
			return nil, err
		}
	}
	if !isNull(r.Reasoning) {
		var rs struct {
			Effort  string          `json:"effort"`
			Summary json.RawMessage `json:"summary"`
		}
		if err := json.Unmarshal(r.Reasoning, &rs); err != nil {
			return nil, oaInvalid("reasoning", "reasoning must be an object")
		}
		if !isNull(rs.Summary) {
			return nil, oaInvalid("reasoning.summary", "reasoning summaries are not supported by this server")
		}
		switch rs.Effort {
		case "", "none", "minimal", "low", "medium", "high", "xhigh":
		default:
			return nil, oaInvalid("reasoning.effort", fmt.Sprintf("%q is not a reasoning effort", rs.Effort))
		}
		p.ReasoningEffort = rs.Effort
	}
	return p, nil
}

// respTools reads Responses function tools: [{"type":"function","name",…}].
func respTools(raw json.RawMessage) ([]tasks.Tool, error) {
	if isNull(raw) {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, oaInvalid("tools", "tools must be an array")
	}
	if len(items) > maxTools {
		return nil, oaInvalid("tools", fmt.Sprintf("at most %d tools", maxTools))
	}
	out := make([]tasks.Tool, 0, len(items))
	for i, item := range items {
		f := fmt.Sprintf("tools[%d]", i)
		var t struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(item, &t); err != nil {
			return nil, oaInvalid(f, "must be a tool object")
		}
		if t.Type != "function" {
			return nil, oaInvalid(f+".type", fmt.Sprintf("tool type %q is not supported by this server (function only)", t.Type))
		}
		def, err := parseFunctionDef(item, f)
		if err != nil {
			return nil, err
		}
		out = append(out, tasks.Tool{Type: "function", Function: def})
	}
	return out, uniqueToolNames(out, "tools")
}

// parseInput turns input (a string, or message, function_call and
// function_call_output items) into input items and chat messages.
func parseInput(raw json.RawMessage, jobID string) ([]inputItem, []tasks.ChatMessage, error) {
	raw = bytes.TrimSpace(raw)
	if isNull(raw) {
		return nil, nil, oaInvalid("input", "input is required")
	}
	if raw[0] == '"' {
		var text string
		if err := json.Unmarshal(raw, &text); err != nil {
			return nil, nil, oaInvalid("input", "input is not a valid string")
		}
		raw, _ = json.Marshal([]map[string]any{{"role": "user", "content": text}})
	}
	var items []struct {
		Type      string          `json:"type"`
		Role      string          `json:"role"`
		Content   json.RawMessage `json:"content"`
		CallID    string          `json:"call_id"`
		Name      string          `json:"name"`
		Arguments string          `json:"arguments"`
		Output    json.RawMessage `json:"output"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, nil, oaInvalid("input", "input must be a string or an array of input items")
	}
	if len(items) == 0 {
		return nil, nil, oaInvalid("input", "input must not be empty")
	}
	var out []inputItem
	var msgs []tasks.ChatMessage
	var images imageBudget
	total := 0
	for i, it := range items {
		param := fmt.Sprintf("input[%d]", i)
		id := fmt.Sprintf("%s_%d", strings.TrimPrefix(jobID, "job_"), i)
		switch it.Type {
		case "function_call":
			call := tasks.ToolCall{ID: it.CallID, Type: "function", Function: tasks.FunctionCall{Name: it.Name, Arguments: it.Arguments}}
			if err := validToolCall(&call, param); err != nil {
				return nil, nil, err
			}
			// Calls that follow an assistant turn belong to it, as in Chat Completions.
			if n := len(msgs); n > 0 && msgs[n-1].Role == "assistant" {
				msgs[n-1].ToolCalls = append(msgs[n-1].ToolCalls, call)
			} else {
				msgs = append(msgs, tasks.ChatMessage{Role: "assistant", ToolCalls: []tasks.ToolCall{call}})
			}
			total += len(it.Arguments)
			out = append(out, inputItem{"id": "fc_" + id, "type": "function_call", "call_id": it.CallID, "name": it.Name,
				"arguments": it.Arguments, "status": "completed"})
			continue
		case "function_call_output":
			if it.CallID == "" {
				return nil, nil, oaInvalid(param+".call_id", "a function_call_output needs the call_id it answers")
			}
			var output string
			if err := json.Unmarshal(it.Output, &output); err != nil {
				return nil, nil, oaInvalid(param+".output", "output must be a string")
			}
			total += len(output)
			msgs = append(msgs, tasks.ChatMessage{Role: "tool", ToolCallID: it.CallID, Content: output})
			out = append(out, inputItem{"id": "fco_" + id, "type": "function_call_output", "call_id": it.CallID, "output": output, "status": "completed"})
			continue
		case "", "message":
		default:
			return nil, nil, oaInvalid(param+".type", fmt.Sprintf("input item type %q is not supported by this server (message, function_call, function_call_output)", it.Type))
		}
		role := it.Role
		switch role {
		case "user", "assistant", "system":
		case "developer":
			role = "system"
		default:
			return nil, nil, oaInvalid(param+".role", fmt.Sprintf("role %q is not supported (user, assistant, system, developer)", it.Role))
		}
		parts, err := respParts(it.Content, param+".content", role, &images)
		if err != nil {
			return nil, nil, err
		}
		text, withImages := userContent(parts)
		total += len(text)
		shown := make([]map[string]any, 0, len(parts))
		for _, p := range parts {
			if p.Type == "image_url" {
				shown = append(shown, map[string]any{"type": "input_image", "image_url": p.ImageURL, "detail": cmp.Or(p.Detail, "auto")})
			} else {
				shown = append(shown, map[string]any{"type": "input_text", "text": p.Text})
			}
		}
		out = append(out, inputItem{"id": "msg_" + id, "type": "message", "role": it.Role, "status": "completed", "content": shown})
		msgs = append(msgs, tasks.ChatMessage{Role: role, Content: text, Parts: withImages})
	}
	if total > 4*maxMessageBytes {
		return nil, nil, oaInvalid("input", fmt.Sprintf("input holds more than %d bytes of text", 4*maxMessageBytes))
	}
	if err := lastTurn(msgs, "input"); err != nil {
		return nil, nil, oaInvalid("input", "the last input item must be a non-empty user message or a function_call_output")
	}
	return out, msgs, nil
}

// respParts reads a message item's content: a string, or input_text and
// input_image parts (output_text in an assistant's).
func respParts(raw json.RawMessage, field, role string, images *imageBudget) ([]tasks.ContentPart, error) {
	c := bytes.TrimSpace(raw)
	if len(c) > 0 && c[0] == '"' {
		var text string
		if err := json.Unmarshal(c, &text); err != nil {
			return nil, oaInvalid(field, "content is not a valid string")
		}
		return []tasks.ContentPart{{Type: "text", Text: text}}, nil
	}
	var parts []struct {
		Type     string `json:"type"`
		Text     string `json:"text"`
		ImageURL string `json:"image_url"`
		Detail   string `json:"detail"`
	}
	if err := json.Unmarshal(c, &parts); err != nil {
		return nil, oaInvalid(field, "content must be a string or an array of input_text and input_image parts")
	}
	out := make([]tasks.ContentPart, 0, len(parts))
	for j, p := range parts {
		pf := fmt.Sprintf("%s[%d]", field, j)
		switch {
		case p.Type == "input_text" || (role == "assistant" && p.Type == "output_text"):
			out = append(out, tasks.ContentPart{Type: "text", Text: p.Text})
		case p.Type == "input_image" && role == "user":
			img, err := images.image(p.ImageURL, p.Detail, pf+".image_url")
			if err != nil {
				return nil, err
			}
			out = append(out, img)
		default:
			return nil, oaInvalid(pf+".type", fmt.Sprintf("content part type %q is not supported here (input_text, input_image)", p.Type))
		}
	}
	return out, nil
}

func (s *Server) createResponse(c echo.Context) error {
	r, err := readResponseRequest(c)
	if err != nil {
		return err
	}
	if r.Model != "" && len(s.opt.Models) > 0 && !slices.Contains(s.opt.Models, r.Model) {
		return errf(http.StatusNotFound, "model_not_found", "model", fmt.Sprintf("the model %q does not exist or you do not have access to it", r.Model))
	}
	stored := r.Store == nil || *r.Store
	if r.Background && !stored {
		return oaInvalid("store", "background responses must be stored (store: true)")
	}
	if r.MaxOutputTokens != nil && *r.MaxOutputTokens < 1 {
		return oaInvalid("max_output_tokens", "max_output_tokens must be at least 1")
	}
	if len(r.Metadata) > 16 {
		return oaInvalid("metadata", "metadata holds at most 16 pairs")
	}
	params, err := r.params()
	if err != nil {
		return err
	}
	if err := s.refusedBy(params, respFieldNames); err != nil {
		return err
	}
	tenant := tenantOf(c)
	ctx := c.Request().Context()
	// Each response is a one-job session: the conversation comes with it.
	session := "resp-" + tasks.NewSessionID()
	id := tasks.NewJobID(tenant, session)
	items, msgs, err := parseInput(r.Input, id)
	if err != nil {
		return err
	}
	conversation := msgs
	if r.PreviousResponseID != "" {
		prev, pj, err := s.loadResponse(ctx, r.PreviousResponseID, tenant)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return errf(http.StatusNotFound, "not_found", "previous_response_id", fmt.Sprintf("no response %q", r.PreviousResponseID))
			}
			return err
		}
		if pj.Status != store.StatusSucceeded || pj.Result == nil {
			return oaInvalid("previous_response_id", "the previous response has not completed")
		}
		answer := tasks.ChatMessage{Role: "assistant", Content: pj.Result.Content, ToolCalls: pj.Result.ToolCalls}
		conversation = append(append(slices.Clone(prev.Conversation), answer), msgs...)
	}
	toProvider := conversation
	if r.Instructions != "" {
		toProvider = append([]tasks.ChatMessage{{Role: "system", Content: r.Instructions}}, conversation...)
	}
	now := time.Now().UTC()
	rec := respRecord{ID: respID(id), Tenant: tenant, Model: r.Model, Instructions: r.Instructions, Previous: r.PreviousResponseID,
		User: r.User, Background: r.Background, Store: stored, CreatedAt: now.Unix(), Metadata: r.Metadata, Input: items,
		Conversation: conversation, MaxOutputTokens: r.MaxOutputTokens, Temperature: r.Temperature, TopP: r.TopP, Params: params}
	if err := s.saveResponse(ctx, rec); err != nil {
		return err
	}
	renew, release := func() {}, func() {}
	if r.Stream {
		if renew, release, err = s.openStream(c, tenant); err != nil {
			return err
		}
	}
	defer release()
	nj := store.NewJob{ID: id, Tenant: tenant, SessionID: session,
		Queue: tasks.QueueName(tasks.PriorityNormal), CreatedAt: now}
	p := tasks.ChatPayload{JobID: id, Tenant: tenant, SessionID: nj.SessionID, Message: msgs[len(msgs)-1].Content,
		Model: r.Model, Priority: tasks.PriorityNormal, SubmittedAt: now, Messages: toProvider, Params: params}
	sub, err := s.jobs.Submit(ctx, nj, p)
	if err != nil {
		return err
	}
	if r.Background && !r.Stream {
		return c.JSON(http.StatusOK, s.responseObject(rec, sub.Job))
	}
	if r.Stream {
		return s.streamResponse(c, rec, sub.Job, -1, renew, !r.Background)
	}
	// Plain create: wait for the answer; a client that leaves cancels it.
	err = stream.Follow(ctx, s.hub, s.store, id, 0, s.opt.Heartbeat, &finalOnly{})
	j, gerr := s.store.Get(context.WithoutCancel(ctx), id)
	if gerr != nil {
		return gerr
	}
	if !store.Terminal(j.Status) {
		s.abandon(ctx, j, "the Responses client disconnected")
		return err
	}
	return c.JSON(http.StatusOK, s.responseObject(rec, j))
}

// finalOnly follows a job until its final event, sending nothing.
type finalOnly struct{}

func (finalOnly) Open() error             { return nil }
func (finalOnly) Event(store.Event) error { return nil }
func (finalOnly) Heartbeat() error        { return nil }

// abandon cancels a job whose only client left.
func (s *Server) abandon(ctx context.Context, j store.Job, why string) {
	if _, err := s.jobs.Cancel(context.WithoutCancel(ctx), j, why); err != nil && !errors.Is(err, jobs.ErrFinished) {
		zerolog.Ctx(ctx).Warn().Err(err).Str("job_id", j.ID).Msg("could not cancel the abandoned job")
	}
}

func (s *Server) saveResponse(ctx context.Context, r respRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := s.rdb.Set(ctx, rkeys.Response(r.ID), b, s.opt.Retention).Err(); err != nil {
		return errors.Join(store.ErrUnavailable, err)
	}
	return nil
}

// loadResponse reads a tenant's stored response and its job.
func (s *Server) loadResponse(ctx context.Context, id, tenant string) (respRecord, store.Job, error) {
	var r respRecord
	if !validRespID(id) {
		return r, store.Job{}, store.ErrNotFound
	}
	raw, err := s.rdb.Get(ctx, rkeys.Response(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return r, store.Job{}, store.ErrNotFound
	}
	if err != nil {
		return r, store.Job{}, errors.Join(store.ErrUnavailable, err)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return r, store.Job{}, fmt.Errorf("response record: %w", err)
	}
	if r.Tenant != tenant || !r.Store {
		return respRecord{}, store.Job{}, store.ErrNotFound
	}
	j, err := s.jobs.Get(ctx, jobOfResp(id), tenant)
	return r, j, err
}

func respStatus(st string) string {
	switch st {
	case store.StatusQueued:
		return "queued"
	case store.StatusActive, store.StatusRetrying:
		return "in_progress"
	case store.StatusSucceeded:
		return "completed"
	case store.StatusCanceled:
		return "cancelled"
	}
	return "failed"
}

// responseObject renders a response in OpenAI's schema.
func (s *Server) responseObject(r respRecord, j store.Job) map[string]any {
	return s.responseObjectAs(r, respStatus(j.Status), j.Result, j.Usage, j.Error)
}

func (s *Server) responseObjectAs(r respRecord, status string, res *store.Result, u *store.Usage, jerr *store.JobError) map[string]any {
	model := r.Model
	if res != nil && res.Model != "" {
		model = res.Model
	}
	if model == "" {
		model = s.opt.DefaultModel
	}
	output := []any{}
	if res != nil && status == "completed" {
		output = outputItems(jobOfResp(r.ID), res)
	}
	var usage any
	if u != nil && status == "completed" {
		usage = map[string]any{"input_tokens": u.PromptTokens, "output_tokens": u.CompletionTokens, "total_tokens": u.PromptTokens + u.CompletionTokens,
			"input_tokens_details": map[string]int{"cached_tokens": 0}, "output_tokens_details": map[string]int{"reasoning_tokens": 0}}
	}
	var errObj any
	if status == "failed" && jerr != nil {
		errObj = map[string]any{"code": jerr.Code, "message": jerr.Message}
	}
	var instructions, previous, user any
	if r.Instructions != "" {
		instructions = r.Instructions
	}
	if r.Previous != "" {
		previous = r.Previous
	}
	if r.User != "" {
		user = r.User
	}
	meta := r.Metadata
	if meta == nil {
		meta = map[string]string{}
	}
	gp := r.Params
	if gp == nil {
		gp = &tasks.GenParams{}
	}
	tools := make([]any, 0, len(gp.Tools))
	for _, t := range gp.Tools {
		tools = append(tools, map[string]any{"type": "function", "name": t.Function.Name, "description": t.Function.Description,
			"parameters": t.Function.Parameters, "strict": t.Function.Strict})
	}
	var toolChoice any = "auto"
	if tc := gp.ToolChoice; tc != nil {
		toolChoice = tc.Mode
		if tc.Mode == "function" {
			toolChoice = map[string]any{"type": "function", "name": tc.Name}
		}
	}
	format := map[string]any{"type": "text"}
	if rf := gp.ResponseFormat; rf != nil {
		format = map[string]any{"type": rf.Type}
		if js := rf.JSONSchema; js != nil {
			format = map[string]any{"type": rf.Type, "name": js.Name, "schema": js.Schema, "strict": js.Strict, "description": js.Description}
		}
	}
	var reasoning any
	if gp.ReasoningEffort != "" {
		reasoning = map[string]any{"effort": gp.ReasoningEffort, "summary": nil}
	}
	return map[string]any{
		"id": r.ID, "object": "response", "created_at": r.CreatedAt, "status": status, "background": r.Background,
		"model": model, "output": output, "usage": usage, "error": errObj, "incomplete_details": nil,
		"instructions": instructions, "previous_response_id": previous, "metadata": meta, "user": user,
		"max_output_tokens": r.MaxOutputTokens, "temperature": r.Temperature, "top_p": r.TopP, "store": r.Store,
		"parallel_tool_calls": gp.ParallelToolCalls == nil || *gp.ParallelToolCalls, "tool_choice": toolChoice, "tools": tools,
		"text": map[string]any{"format": format}, "reasoning": reasoning,
	}
}

// outputItems are a finished reply's output: its text as a message, then
// each tool call as a function_call item.
func outputItems(jobID string, res *store.Result) []any {
	out := []any{}
	if res.Content != "" || len(res.ToolCalls) == 0 {
		out = append(out, messageItem(jobID, "completed", []any{textPart(res.Content)}))
	}
	for k, tc := range res.ToolCalls {
		out = append(out, functionCallItem(jobID, k, "completed", tc.ID, tc.Function.Name, tc.Function.Arguments))
	}
	return out
}

func messageItem(jobID, status string, content []any) map[string]any {
	return map[string]any{"id": msgID(jobID), "type": "message", "status": status, "role": "assistant", "content": content}
}

func textPart(text string) map[string]any {
	return map[string]any{"type": "output_text", "text": text, "annotations": []any{}}
}

func functionCallItem(jobID string, k int, status, callID, name, args string) map[string]any {
	return map[string]any{"id": fcID(jobID, k), "type": "function_call", "status": status, "call_id": callID, "name": name, "arguments": args}
}

func (s *Server) getResponse(c echo.Context) error {
	ctx := c.Request().Context()
	r, j, err := s.loadResponse(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return respNotFound(err, c.Param("id"))
	}
	streamed := c.QueryParam("stream") == "true"
	if !streamed && c.Request().ContentLength > 0 { // the Go SDK sends {"stream":true} in a GET body
		var body struct {
			Stream bool `json:"stream"`
		}
		if json.NewDecoder(io.LimitReader(c.Request().Body, 4096)).Decode(&body) == nil {
			streamed = body.Stream
		}
	}
	if !streamed {
		return c.JSON(http.StatusOK, s.responseObject(r, j))
	}
	after := int64(-1)
	if v := c.QueryParam("starting_after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return oaInvalid("starting_after", "starting_after must be a whole number of 0 or more")
		}
		after = n
	}
	renew, release, err := s.openStream(c, r.Tenant)
	if err != nil {
		return err
	}
	defer release()
	return s.streamResponse(c, r, j, after, renew, false)
}

func respNotFound(err error, id string) error {
	if errors.Is(err, store.ErrNotFound) {
		return errf(http.StatusNotFound, "not_found", "response_id", fmt.Sprintf("no response %q", id))
	}
	return err
}

func (s *Server) cancelResponse(c echo.Context) error {
	ctx := c.Request().Context()
	r, j, err := s.loadResponse(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return respNotFound(err, c.Param("id"))
	}
	if !r.Background {
		return oaInvalid("response_id", "only background responses can be cancelled")
	}
	if !store.Terminal(j.Status) {
		if j, err = s.jobs.Cancel(ctx, j, "cancelled through the Responses API"); err != nil && !errors.Is(err, jobs.ErrFinished) {
			return err
		}
		if j, err = s.store.Get(ctx, j.ID); err != nil {
			return err
		}
	}
	return c.JSON(http.StatusOK, s.responseObject(r, j))
}

func (s *Server) deleteResponse(c echo.Context) error {
	ctx := c.Request().Context()
	r, j, err := s.loadResponse(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return respNotFound(err, c.Param("id"))
	}
	if !store.Terminal(j.Status) {
		s.abandon(ctx, j, "the response was deleted")
	}
	if err := s.rdb.Del(ctx, rkeys.Response(r.ID)).Err(); err != nil {
		return errors.Join(store.ErrUnavailable, err)
	}
	return c.JSON(http.StatusOK, map[string]any{"id": r.ID, "object": "response.deleted", "deleted": true})
}

func (s *Server) responseInputItems(c echo.Context) error {
	r, _, err := s.loadResponse(c.Request().Context(), c.Param("id"), tenantOf(c))
	if err != nil {
		return respNotFound(err, c.Param("id"))
	}
	items := slices.Clone(r.Input)
	if c.QueryParam("order") != "asc" { // OpenAI lists newest first by default
		slices.Reverse(items)
	}
	var first, last any
	if len(items) > 0 {
		first, last = items[0]["id"], items[len(items)-1]["id"]
	}
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": false})
}
