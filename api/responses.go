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

// respParams are the request fields this server takes; anything else is a
// 400 naming it, never silently ignored.
var respParams = []string{"model", "input", "instructions", "previous_response_id", "background", "stream",
	"store", "max_output_tokens", "temperature", "top_p", "metadata", "user"}

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
}

// inputItem is one message of a response's input, as input_items lists it.
type inputItem struct {
	ID      string        `json:"id"`
	Type    string        `json:"type"`
	Role    string        `json:"role"`
	Status  string        `json:"status"`
	Content []contentPart `json:"content"`
}

type contentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

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
}

func respID(jobID string) string { return "resp_" + strings.TrimPrefix(jobID, "job_") }
func jobOfResp(id string) string { return "job_" + strings.TrimPrefix(id, "resp_") }
func msgID(jobID string) string  { return "msg_" + strings.TrimPrefix(jobID, "job_") }
func validRespID(id string) bool {
	return strings.HasPrefix(id, "resp_") && tasks.ValidJobID(jobOfResp(id))
}

func readResponseRequest(c echo.Context) (respRequest, error) {
	var r respRequest
	body, err := readOpenAIBody(c)
	if err != nil {
		return r, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return r, oaInvalid("body", "the body is not a valid Responses request: "+err.Error())
	}
	var unknown []string
	for k, v := range fields {
		if !slices.Contains(respParams, k) && string(bytes.TrimSpace(v)) != "null" {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return r, oaInvalid(unknown[0], fmt.Sprintf("parameter %q is not supported by this server (supported: %s)", unknown[0], strings.Join(respParams, ", ")))
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, oaInvalid("body", "the body is not a valid Responses request: "+err.Error())
	}
	return r, nil
}

// parseInput turns input (a string, or message items with input_text parts)
// into input items and chat messages.
func parseInput(raw json.RawMessage, jobID string) ([]inputItem, []tasks.ChatMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
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
		Type    string          `json:"type"`
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, nil, oaInvalid("input", "input must be a string or an array of message items")
	}
	if len(items) == 0 {
		return nil, nil, oaInvalid("input", "input must not be empty")
	}
	var out []inputItem
	var msgs []tasks.ChatMessage
	total := 0
	for i, it := range items {
		param := fmt.Sprintf("input[%d]", i)
		if it.Type != "" && it.Type != "message" {
			return nil, nil, oaInvalid(param+".type", fmt.Sprintf("input item type %q is not supported (message only)", it.Type))
		}
		role := it.Role
		switch role {
		case "user", "assistant", "system":
		case "developer":
			role = "system"
		default:
			return nil, nil, oaInvalid(param+".role", fmt.Sprintf("role %q is not supported (user, assistant, system, developer)", it.Role))
		}
		var text string
		var parts []contentPart
		c := bytes.TrimSpace(it.Content)
		switch {
		case len(c) > 0 && c[0] == '"':
			_ = json.Unmarshal(c, &text)
		default:
			if err := json.Unmarshal(c, &parts); err != nil {
				return nil, nil, oaInvalid(param+".content", "content must be a string or an array of input_text parts")
			}
			var b strings.Builder
			for j, p := range parts {
				if p.Type != "input_text" && !(role == "assistant" && p.Type == "output_text") {
					return nil, nil, oaInvalid(fmt.Sprintf("%s.content[%d].type", param, j), fmt.Sprintf("content part type %q is not supported (input_text only)", p.Type))
				}
				b.WriteString(p.Text)
			}
			text = b.String()
		}
		total += len(text)
		out = append(out, inputItem{ID: fmt.Sprintf("msg_%s_%d", strings.TrimPrefix(jobID, "job_"), i), Type: "message", Role: it.Role,
			Status: "completed", Content: []contentPart{{Type: "input_text", Text: text}}})
		msgs = append(msgs, tasks.ChatMessage{Role: role, Content: text})
	}
	if total > 4*maxMessageBytes {
		return nil, nil, oaInvalid("input", fmt.Sprintf("input holds more than %d bytes of text", 4*maxMessageBytes))
	}
	if last := msgs[len(msgs)-1]; last.Role != "user" || strings.TrimSpace(last.Content) == "" {
		return nil, nil, oaInvalid("input", "the last input item must be a non-empty user message")
	}
	return out, msgs, nil
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
		conversation = append(append(slices.Clone(prev.Conversation), tasks.ChatMessage{Role: "assistant", Content: pj.Result.Content}), msgs...)
	}
	toProvider := conversation
	if r.Instructions != "" {
		toProvider = append([]tasks.ChatMessage{{Role: "system", Content: r.Instructions}}, conversation...)
	}
	params := &tasks.GenParams{Temperature: r.Temperature, TopP: r.TopP}
	if r.MaxOutputTokens != nil {
		params.MaxTokens = *r.MaxOutputTokens
	}
	now := time.Now().UTC()
	rec := respRecord{ID: respID(id), Tenant: tenant, Model: r.Model, Instructions: r.Instructions, Previous: r.PreviousResponseID,
		User: r.User, Background: r.Background, Store: stored, CreatedAt: now.Unix(), Metadata: r.Metadata, Input: items,
		Conversation: conversation, MaxOutputTokens: r.MaxOutputTokens, Temperature: r.Temperature, TopP: r.TopP}
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
		output = append(output, map[string]any{"type": "message", "id": msgID(jobOfResp(r.ID)), "status": "completed", "role": "assistant",
			"content": []any{map[string]any{"type": "output_text", "text": res.Content, "annotations": []any{}}}})
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
	return map[string]any{
		"id": r.ID, "object": "response", "created_at": r.CreatedAt, "status": status, "background": r.Background,
		"model": model, "output": output, "usage": usage, "error": errObj, "incomplete_details": nil,
		"instructions": instructions, "previous_response_id": previous, "metadata": meta, "user": user,
		"max_output_tokens": r.MaxOutputTokens, "temperature": r.Temperature, "top_p": r.TopP, "store": r.Store,
		"parallel_tool_calls": false, "tool_choice": "none", "tools": []any{}, "text": map[string]any{"format": map[string]string{"type": "text"}},
	}
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
		first, last = items[0].ID, items[len(items)-1].ID
	}
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": false})
}

// streamResponse streams a response's events with OpenAI's sequence numbers.
// They are derived from the job's event log, so they are the same from every
// API process and a client resumes exactly with starting_after:
//   - the prelude is 0…P-1: response.created, (response.queued when in the
//     background,) response.in_progress, response.output_item.added,
//     response.content_part.added;
//   - the job's event k is P-1+k (a response.output_text.delta for a token);
//   - after its final event F: response.output_text.done, content_part.done,
//     output_item.done and response.completed (or response.failed) from P-1+F.
//
// OpenAI's format cannot take back text: when an attempt fails after part of
// its answer went out (a `retry` in the job's log), a stream that has shown
// any of it ends with an `error` event (code upstream_retry) while the
// response goes on; a new stream from the start shows only the latest
// attempt. cancelOnLeave: the job stops if its only client leaves.
func (s *Server) streamResponse(c echo.Context, rec respRecord, j store.Job, startingAfter int64, renew func(), cancelOnLeave bool) error {
	ctx := c.Request().Context()
	p := int64(4)
	if rec.Background {
		p = 5
	}
	after := int64(0)
	if startingAfter >= 0 {
		after = max(0, startingAfter-p+1)
	} else {
		evs, err := s.store.Events(ctx, j.ID, 0)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if ev.Type == store.EventRetry {
				after = ev.Seq
			}
		}
	}
	sink := &respSink{srv: s, res: c.Response(), rec: rec, p: p, skip: startingAfter, status: respStatus(j.Status)}
	s.m.streamClients.Inc()
	defer s.m.streamClients.Dec()
	err := stream.Follow(ctx, s.hub, s.store, j.ID, after, s.opt.Heartbeat, leasedSink{sink, renew})
	if !sink.final && cancelOnLeave {
		if cur, gerr := s.store.Get(context.WithoutCancel(ctx), j.ID); gerr == nil && !store.Terminal(cur.Status) {
			s.abandon(ctx, cur, "the Responses client disconnected")
		}
	}
	if err != nil && !errors.Is(err, errRespEnded) && !c.Response().Committed {
		return err
	}
	return nil
}

var errRespEnded = errors.New("response stream ended")

type respSink struct {
	srv    *Server
	res    *echo.Response
	rec    respRecord
	p      int64 // prelude length
	skip   int64 // starting_after; -1: none
	status string
	shown  bool // a delta of the current attempt went out
	final  bool
}

func (s *respSink) send(n int64, typ string, body map[string]any) error {
	if n <= s.skip {
		return nil
	}
	body["type"] = typ
	body["sequence_number"] = n
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.res, "event: %s\ndata: %s\n\n", typ, b); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

func (s *respSink) item(status string, content []any) map[string]any {
	return map[string]any{"id": msgID(jobOfResp(s.rec.ID)), "type": "message", "status": status, "role": "assistant", "content": content}
}

func (s *respSink) Open() error {
	sseHead(s.res)
	s.res.Flush()
	obj := func(st string) map[string]any { return s.srv.responseObjectAs(s.rec, st, nil, nil, nil) }
	first := "in_progress"
	if s.rec.Background {
		first = "queued"
	}
	steps := []func(n int64) error{
		func(n int64) error { return s.send(n, "response.created", map[string]any{"response": obj(first)}) },
	}
	if s.rec.Background {
		steps = append(steps, func(n int64) error { return s.send(n, "response.queued", map[string]any{"response": obj("queued")}) })
	}
	steps = append(steps,
		func(n int64) error {
			return s.send(n, "response.in_progress", map[string]any{"response": obj("in_progress")})
		},
		func(n int64) error {
			return s.send(n, "response.output_item.added", map[string]any{"output_index": 0, "item": s.item("in_progress", []any{})})
		},
		func(n int64) error {
			return s.send(n, "response.content_part.added", map[string]any{"item_id": msgID(jobOfResp(s.rec.ID)), "output_index": 0,
				"content_index": 0, "part": map[string]any{"type": "output_text", "text": "", "annotations": []any{}}})
		})
	for i, step := range steps {
		if err := step(int64(i)); err != nil {
			return err
		}
	}
	s.shown = s.skip >= s.p // a resumed client has seen deltas
	return nil
}

func (s *respSink) Heartbeat() error { return sseHeartbeat(s.res) }

func (s *respSink) Event(ev store.Event) error {
	pl, err := ev.Decode()
	if err != nil {
		return err
	}
	n := s.p - 1 + ev.Seq
	item := msgID(jobOfResp(s.rec.ID))
	switch pl := pl.(type) {
	case store.TokenEvent:
		if n > s.skip {
			s.shown = true
		}
		return s.send(n, "response.output_text.delta", map[string]any{"item_id": item, "output_index": 0, "content_index": 0,
			"delta": pl.Delta, "logprobs": []any{}})
	case store.RetryEvent:
		if !s.shown {
			return nil // nothing of the failed attempt was shown here
		}
		s.final = true
		if err := s.send(n, "error", map[string]any{"code": "upstream_retry", "param": nil,
			"message": "the provider failed mid-answer and the answer starts over; stream the response again from the start, or poll it"}); err != nil {
			return err
		}
		return errRespEnded
	case store.DoneEvent:
		s.final = true
		text := ""
		if pl.Result != nil {
			text = pl.Result.Content
		}
		part := map[string]any{"type": "output_text", "text": text, "annotations": []any{}}
		if err := s.send(n, "response.output_text.done", map[string]any{"item_id": item, "output_index": 0, "content_index": 0, "text": text, "logprobs": []any{}}); err != nil {
			return err
		}
		if err := s.send(n+1, "response.content_part.done", map[string]any{"item_id": item, "output_index": 0, "content_index": 0, "part": part}); err != nil {
			return err
		}
		if err := s.send(n+2, "response.output_item.done", map[string]any{"output_index": 0, "item": s.item("completed", []any{part})}); err != nil {
			return err
		}
		return s.send(n+3, "response.completed", map[string]any{"response": s.srv.responseObjectAs(s.rec, "completed", pl.Result, pl.Usage, nil)})
	case store.ErrorEvent:
		s.final = true
		return s.send(n, "response.failed", map[string]any{"response": s.srv.responseObjectAs(s.rec, "failed", nil, nil, pl.Error)})
	case store.CanceledEvent:
		s.final = true
		return s.send(n, "response.failed", map[string]any{"response": s.srv.responseObjectAs(s.rec, "cancelled", nil, nil, nil)})
	}
	return nil
}
