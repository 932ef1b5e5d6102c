package api

import (
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
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
	"github.com/chatfleet/chatfleet/webhooks"
)

// The OpenAI Responses API over the fleet: a response is a job of its own
// one-job session whose payload carries its input and, when it follows
// another, the reference of its previous_response_id chain: the worker
// assembles the conversation (earlier inputs and outputs, then the input)
// when the job runs, so a response that branches from an older one sees
// exactly its own chain. With background it is durable: poll it, or stream
// it and resume with starting_after from any API process.

func (s *Server) registerResponses(e *echo.Echo) {
	mw := []echo.MiddlewareFunc{openAIErrors, auth(s.keys), s.gate.middleware, s.rate.middleware}
	e.POST("/v1/responses", s.createResponse, append(mw, s.bytes.limit(maxOpenAIBody))...)
	e.GET("/v1/responses/:id", s.getResponse, mw...)
	e.POST("/v1/responses/:id/cancel", s.cancelResponse, mw...)
	e.DELETE("/v1/responses/:id", s.deleteResponse, mw...)
	e.GET("/v1/responses/:id/input_items", s.responseInputItems, mw...)
}

// respRecord is a response's record (store.Response).
type respRecord = store.Response

func respID(jobID string) string { return "resp_" + strings.TrimPrefix(jobID, "job_") }
func jobOfResp(id string) string { return store.ResponseJobID(id) }
func msgID(jobID string) string  { return "msg_" + strings.TrimPrefix(jobID, "job_") }
func fcID(jobID string, k int) string {
	return fmt.Sprintf("fc_%s_%d", strings.TrimPrefix(jobID, "job_"), k)
}

func (s *Server) createResponse(c echo.Context) error {
	r, err := readResponseRequest(c)
	if err != nil {
		return err
	}
	tenant := tenantOf(c)
	ctx := c.Request().Context()
	// Each response is a one-job session: the conversation comes with it.
	session := "resp-" + tasks.NewSessionID()
	nj := store.NewJob{ID: tasks.NewJobID(tenant, session), Tenant: tenant, SessionID: session,
		Queue: tasks.QueueName(tasks.PriorityNormal), CreatedAt: time.Now().UTC()}
	rec, p, err := s.responseJob(r, nj, tasks.PriorityNormal)
	if err != nil {
		return err
	}
	if r.PreviousResponseID != "" {
		if rec.ConversationBytes, err = s.checkChain(ctx, r.PreviousResponseID, tenant, rec.ConversationBytes); err != nil {
			return err
		}
	}
	id, stored := nj.ID, rec.Store
	renew, release := func() {}, func() {}
	if r.Stream || !r.Background {
		// Held until the answer (streamed or not): it counts against the
		// tenant's cap of held connections.
		if renew, release, err = s.openStream(c, tenant); err != nil {
			return err
		}
	}
	defer release()
	if r.Background && s.opt.Webhooks.Wants(tenant, webhooks.KindResponse) {
		nj.Webhook = webhooks.Spec{Kind: webhooks.KindResponse, ObjectID: rec.ID}.Encode()
	}
	sub, err := s.jobs.Submit(ctx, nj, p)
	if err != nil {
		return err // refused (a cap, Redis): nothing of the response was written
	}
	bodyReleased(c)
	if stored { // store: false keeps nothing once the answer is delivered
		if err := s.saveResponse(ctx, rec); err != nil {
			s.abandon(ctx, sub.Job, "the response could not be recorded")
			return err
		}
	}
	if r.Background && !r.Stream {
		return c.JSON(http.StatusOK, s.responseObject(rec, sub.Job))
	}
	if r.Stream {
		err := s.streamResponse(c, rec, sub.Job, -1, renew, !r.Background)
		if !stored {
			s.purge(ctx, sub.Job.ID, tenant)
		}
		return err
	}
	// Plain create: wait for the answer; a client that leaves cancels it.
	err = stream.AwaitFinal(ctx, s.hub, s.store, id, s.opt.Heartbeat, leasedSink{&finalOnly{}, renew})
	j, gerr := s.store.Get(context.WithoutCancel(ctx), id)
	if gerr != nil {
		return gerr
	}
	if !store.Terminal(j.Status) {
		s.abandon(ctx, j, "the Responses client disconnected")
		if !stored {
			s.purge(ctx, id, tenant)
		}
		return err
	}
	answer := s.responseObject(rec, j)
	if !stored {
		s.purge(ctx, id, tenant)
	}
	return c.JSON(http.StatusOK, answer)
}

// responseJob validates a Responses request and makes the record and the
// job payload of its response as job nj; a continued conversation's chain
// is checked by the caller (checkChain).
func (s *Server) responseJob(r respRequest, nj store.NewJob, priority string) (respRecord, tasks.ChatPayload, error) {
	var rec respRecord
	var p tasks.ChatPayload
	if !s.served(r.Model) {
		return rec, p, s.unknownModel(r.Model, true)
	}
	stored := r.Store == nil || *r.Store
	if r.Background && !stored {
		return rec, p, oaInvalid("store", "background responses must be stored (store: true)")
	}
	if r.MaxOutputTokens != nil && *r.MaxOutputTokens < 1 {
		return rec, p, oaInvalid("max_output_tokens", "max_output_tokens must be at least 1")
	}
	if err := validShared(r.Model, r.User, r.Metadata); err != nil {
		return rec, p, err
	}
	if len(r.Instructions) > maxInputText {
		return rec, p, oaInvalid("instructions", fmt.Sprintf("instructions hold more than %d bytes of text", maxInputText))
	}
	params, err := r.params()
	if err != nil {
		return rec, p, err
	}
	if err := s.refusedBy(r.Model, params, respFieldNames); err != nil {
		return rec, p, err
	}
	items, msgs, err := parseInput(r.Input, nj.ID, len(r.Instructions))
	if err != nil {
		return rec, p, err
	}
	rec = respRecord{ID: respID(nj.ID), Tenant: nj.Tenant, Model: r.Model, Instructions: r.Instructions, Previous: r.PreviousResponseID,
		User: r.User, Background: r.Background, Store: stored, CreatedAt: nj.CreatedAt.Unix(), Metadata: r.Metadata, Input: items,
		Messages: msgs, ConversationBytes: messagesBytes(msgs), MaxOutputTokens: r.MaxOutputTokens, Temperature: r.Temperature, TopP: r.TopP, Params: params}
	p = tasks.ChatPayload{JobID: nj.ID, Tenant: nj.Tenant, SessionID: nj.SessionID, Message: msgs[len(msgs)-1].Content,
		Model: r.Model, Priority: priority, SubmittedAt: nj.CreatedAt, Messages: msgs, Params: params}
	switch {
	case r.PreviousResponseID != "":
		// The chain goes by reference: the worker reads it when the job runs.
		p.Chain = &tasks.ChainRef{Previous: r.PreviousResponseID, Instructions: r.Instructions}
	case r.Instructions != "":
		p.Messages = append([]tasks.ChatMessage{{Role: "system", Content: r.Instructions}}, msgs...)
	}
	return rec, p, nil
}

// purge removes everything that holds a response's content: its job's
// record, event log and queued copy (canceled first if unfinished).
func (s *Server) purge(ctx context.Context, jobID, tenant string) {
	ctx = context.WithoutCancel(ctx)
	j, err := s.jobs.Get(ctx, jobID, tenant)
	if err == nil {
		err = s.jobs.Purge(ctx, j)
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		zerolog.Ctx(ctx).Warn().Err(err).Str("job_id", jobID).Msg("could not remove the response's content")
	}
}

// checkChain checks that the response prev can be followed by an input of
// size bytes, and returns the size of the conversation that makes: prev is
// the tenant's and has completed, the conversation is within the configured
// cap (the record knows its size: refused before the chain is read), and no
// earlier response of the chain has expired. The worker reads the chain
// again when the job runs.
func (s *Server) checkChain(ctx context.Context, prev, tenant string, size int) (int, error) {
	rec, j, err := s.loadResponse(ctx, prev, tenant)
	if errors.Is(err, store.ErrNotFound) {
		return 0, errf(http.StatusNotFound, "not_found", "previous_response_id", fmt.Sprintf("no response %q", prev))
	}
	if err != nil {
		return 0, err
	}
	if j.Status != store.StatusSucceeded || j.Result == nil {
		return 0, oaInvalid("previous_response_id", "the previous response has not completed")
	}
	answer := messagesBytes([]tasks.ChatMessage{{Content: j.Result.Content, ToolCalls: j.Result.ToolCalls}})
	total := rec.ConversationBytes + answer + size
	if rec.Conversation != nil {
		total = messagesBytes(rec.Conversation) + answer + size
	}
	if limit := s.opt.MaxConversationBytes; limit > 0 && total > limit {
		return 0, oaInvalid("previous_response_id", fmt.Sprintf("the conversation would hold %d bytes, over this server's limit of %d: start a new one", total, limit))
	}
	_, err = s.store.ResponseChain(ctx, prev, tenant)
	switch {
	case errors.Is(err, store.ErrResponseGone):
		return 0, oaInvalid("previous_response_id", fmt.Sprintf("an earlier response of the conversation has expired or was deleted (%v)", err))
	case errors.Is(err, store.ErrResponseUnfinished):
		return 0, oaInvalid("previous_response_id", "the previous response has not completed")
	case err != nil:
		return 0, err
	}
	return total, nil
}

// messagesBytes is what a conversation weighs: its text, tool calls and images.
func messagesBytes(msgs []tasks.ChatMessage) int {
	n := 0
	for _, m := range msgs {
		n += len(m.Content)
		for _, p := range m.Parts {
			n += len(p.Text) + len(p.ImageURL)
		}
		for _, tc := range m.ToolCalls {
			n += len(tc.Function.Name) + len(tc.Function.Arguments)
		}
	}
	return n
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
	r, err := s.store.Response(ctx, id)
	if err != nil {
		return respRecord{}, store.Job{}, err
	}
	if r.Tenant != tenant || !r.Store {
		return respRecord{}, store.Job{}, store.ErrNotFound
	}
	j, err := s.jobs.Get(ctx, jobOfResp(id), tenant)
	return r, j, err
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
	if err := s.jobs.Purge(ctx, j); err != nil { // cancels it first if unfinished
		return err
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
	items := fullItems(r)
	if c.QueryParam("order") != "asc" { // OpenAI lists newest first by default
		slices.Reverse(items)
	}
	var first, last any
	if len(items) > 0 {
		first, last = items[0]["id"], items[len(items)-1]["id"]
	}
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": false})
}
