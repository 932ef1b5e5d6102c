package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// The Batch API (/v1/batches), in OpenAI's shapes: each line of a batch's
// input file runs as a job in the low lane, under the batch's tenant, as
// the scheduler has room (batchrun.go).

// batchEndpoints are the endpoints a batch's lines may call.
var batchEndpoints = []string{"/v1/chat/completions", "/v1/responses"}

// batchWindow is the only completion_window (OpenAI's).
const batchWindow = "24h"

// maxBatchErrors bounds the input errors a failed batch lists.
const maxBatchErrors = 1000

// registerBatches adds /v1/batches.
func (s *Server) registerBatches(e *echo.Echo) {
	mw := []echo.MiddlewareFunc{openAIErrors, auth(s.keys), s.gate.middleware, s.rate.middleware}
	e.POST("/v1/batches", s.createBatch, append(mw, s.bytes.limit(maxBodyBytes))...)
	e.GET("/v1/batches", s.listBatches, mw...)
	e.GET("/v1/batches/:id", s.getBatch, mw...)
	e.POST("/v1/batches/:id/cancel", s.cancelBatch, mw...)
}

// batchLine is a line of a batch's input file.
type batchLine struct {
	CustomID string          `json:"custom_id"`
	Method   string          `json:"method"`
	URL      string          `json:"url"`
	Body     json.RawMessage `json:"body"`
}

// lineError is an input file's error, in OpenAI's shape.
type lineError struct {
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
	Line    int     `json:"line"`
}

// parseBatchInput reads a batch's input file: its lines, or what is wrong
// with them (each naming its line, from 1). Without check, the bodies are
// not validated (a running batch's lines, validated when it was created:
// an edit of the models file since must not shift them).
func (s *Server) parseBatchInput(content []byte, endpoint string, check bool) ([]batchLine, []lineError) {
	var lines []batchLine
	var errs []lineError
	seen := map[string]int{}
	fail := func(n int, code, msg, param string) {
		if len(errs) < maxBatchErrors {
			e := lineError{Code: code, Message: msg, Line: n}
			if param != "" {
				e.Param = &param
			}
			errs = append(errs, e)
		}
	}
	for i, raw := range bytes.Split(bytes.TrimRight(content, "\n"), []byte("\n")) {
		n := i + 1
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 {
			fail(n, "invalid_json_line", "the line is empty", "")
			continue
		}
		var l batchLine
		if err := json.Unmarshal(raw, &l); err != nil {
			fail(n, "invalid_json_line", "the line is not a JSON object: "+err.Error(), "")
			continue
		}
		switch {
		case l.CustomID == "":
			fail(n, "missing_required_parameter", "custom_id is required", "custom_id")
			continue
		case seen[l.CustomID] > 0:
			fail(n, "duplicate_custom_id", fmt.Sprintf("custom_id %q is used on line %d already", l.CustomID, seen[l.CustomID]), "custom_id")
			continue
		case l.Method != http.MethodPost:
			fail(n, "invalid_method", fmt.Sprintf("method must be POST, not %q", l.Method), "method")
			continue
		case l.URL != endpoint:
			fail(n, "mismatched_endpoint", fmt.Sprintf("url %q differs from the batch's endpoint %q", l.URL, endpoint), "url")
			continue
		}
		seen[l.CustomID] = n
		if !check {
			lines = append(lines, l)
			continue
		}
		if _, err := s.lineJob(endpoint, l.Body, store.NewJob{ID: "job_check"}); err != nil {
			var ae *Error
			if errors.As(err, &ae) {
				fail(n, "invalid_request", ae.Message, "body."+ae.Field)
			} else {
				fail(n, "invalid_request", err.Error(), "body")
			}
			continue
		}
		lines = append(lines, l)
	}
	return lines, errs
}

// lineJob validates a batch line's request to endpoint and makes its job
// as nj, in the low lane.
func (s *Server) lineJob(endpoint string, body []byte, nj store.NewJob) (tasks.ChatPayload, error) {
	if endpoint == "/v1/responses" {
		var r respRequest
		if err := decodeKnown(body, &r, respParams, "Responses"); err != nil {
			return tasks.ChatPayload{}, err
		}
		switch {
		case r.Stream:
			return tasks.ChatPayload{}, oaInvalid("stream", "a batch's requests cannot be streamed")
		case r.Background:
			return tasks.ChatPayload{}, oaInvalid("background", "a batch's requests run in the background already")
		case r.PreviousResponseID != "":
			return tasks.ChatPayload{}, oaInvalid("previous_response_id", "a batch's requests cannot continue a stored response")
		}
		_, p, err := s.responseJob(r, nj, tasks.PriorityLow)
		return p, err
	}
	var r oaRequest
	if err := decodeKnown(body, &r, oaFields, "Chat Completions"); err != nil {
		return tasks.ChatPayload{}, err
	}
	if r.Stream {
		return tasks.ChatPayload{}, oaInvalid("stream", "a batch's requests cannot be streamed")
	}
	return s.chatJob(r, nj, tasks.PriorityLow)
}

// lineAnswer is the body of a line's answer, job j, in endpoint's object:
// a chat.completion or a response (not stored: its line holds it).
func (s *Server) lineAnswer(endpoint string, body []byte, j store.Job) any {
	if endpoint == "/v1/responses" {
		var r respRequest
		_ = decodeKnown(body, &r, respParams, "Responses")
		rec, _, err := s.responseJob(r, store.NewJob{ID: j.ID, Tenant: j.Tenant, CreatedAt: j.CreatedAt}, tasks.PriorityLow)
		if err != nil { // an edit of the models file since: the answer stands without its request's echo
			rec = respRecord{ID: respID(j.ID), Tenant: j.Tenant, Model: j.Model, CreatedAt: j.CreatedAt.Unix()}
		}
		rec.Store = false
		return s.responseObject(rec, j)
	}
	model := j.Model
	if j.Result != nil && j.Result.Model != "" {
		model = j.Result.Model
	}
	return completionObject("chatcmpl-"+strings.TrimPrefix(j.ID, "job_"), j.CreatedAt.Unix(), model, j.Result, j.Usage)
}

func (s *Server) createBatch(c echo.Context) error {
	var req struct {
		InputFileID      string            `json:"input_file_id"`
		Endpoint         string            `json:"endpoint"`
		CompletionWindow string            `json:"completion_window"`
		Metadata         map[string]string `json:"metadata"`
	}
	if err := readKnown(c, &req, []string{"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}, "batch"); err != nil {
		return err
	}
	bodyReleased(c)
	switch {
	case req.InputFileID == "":
		return oaInvalid("input_file_id", "input_file_id is required")
	case !slices.Contains(batchEndpoints, req.Endpoint):
		return oaInvalid("endpoint", fmt.Sprintf("endpoint %q is not supported by this server (supported: %v)", req.Endpoint, batchEndpoints))
	case req.CompletionWindow != batchWindow:
		return oaInvalid("completion_window", fmt.Sprintf("completion_window must be %q", batchWindow))
	case len(req.Metadata) > 16:
		return oaInvalid("metadata", "metadata holds at most 16 pairs")
	}
	ctx, tenant := c.Request().Context(), tenantOf(c)
	f, err := s.store.GetFile(ctx, tenant, req.InputFileID)
	if errors.Is(err, store.ErrFileNotFound) {
		return errf(http.StatusNotFound, "file_not_found", "input_file_id", fmt.Sprintf("no file %q", req.InputFileID))
	}
	if err != nil {
		return err
	}
	if f.Purpose != "batch" {
		return oaInvalid("input_file_id", fmt.Sprintf("file %q has purpose %q, not batch", f.ID, f.Purpose))
	}
	content, err := s.store.FileContent(ctx, tenant, f.ID)
	if err != nil {
		return err
	}
	// Validation reads the whole file first: a batch with a bad line runs
	// nothing.
	now := time.Now()
	b := store.Batch{ID: newObjectID("batch_"), Tenant: tenant, Endpoint: req.Endpoint, InputFileID: f.ID,
		CompletionWindow: req.CompletionWindow, CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour)}
	if len(req.Metadata) > 0 {
		m, _ := json.Marshal(req.Metadata)
		b.Metadata = string(m)
	}
	lines, lineErrs := s.parseBatchInput(content, req.Endpoint, true)
	if len(lineErrs) > 0 {
		e, _ := json.Marshal(lineErrs)
		b.Status, b.Errors, b.FailedAt = store.BatchFailed, string(e), now
	} else {
		b.Status, b.InProgressAt, b.Total = store.BatchInProgress, now, len(lines)
	}
	if err := s.jobs.CreateBatch(ctx, b, s.batchKeep()); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, batchObject(b))
}

// batchKeep is how long a batch's keys are kept: its window, then the
// files' retention.
func (s *Server) batchKeep() time.Duration { return 24*time.Hour + s.opt.FilesRetention }

// batchObject is a batch in OpenAI's shape.
func batchObject(b store.Batch) map[string]any {
	at := func(t time.Time) any {
		if t.IsZero() {
			return nil
		}
		return t.Unix()
	}
	orNil := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	var errs any
	if b.Errors != "" {
		errs = map[string]any{"object": "list", "data": json.RawMessage(b.Errors)}
	}
	var meta any
	if b.Metadata != "" {
		meta = json.RawMessage(b.Metadata)
	}
	return map[string]any{
		"id": b.ID, "object": "batch", "endpoint": b.Endpoint, "errors": errs, "input_file_id": b.InputFileID,
		"completion_window": b.CompletionWindow, "status": b.Status, "output_file_id": orNil(b.OutputFileID),
		"error_file_id": orNil(b.ErrorFileID), "created_at": b.CreatedAt.Unix(), "in_progress_at": at(b.InProgressAt),
		"expires_at": at(b.ExpiresAt), "finalizing_at": at(b.FinalizingAt), "completed_at": at(b.CompletedAt),
		"failed_at": at(b.FailedAt), "expired_at": at(b.ExpiredAt), "cancelling_at": at(b.CancellingAt),
		"cancelled_at": at(b.CancelledAt), "metadata": meta,
		"request_counts": map[string]int{"total": b.Total, "completed": b.Completed, "failed": b.Failed},
	}
}

// batchOf reads the tenant's batch named in the path; 404 for any other.
func (s *Server) batchOf(c echo.Context) (store.Batch, error) {
	b, err := s.store.GetBatch(c.Request().Context(), tenantOf(c), c.Param("id"))
	if errors.Is(err, store.ErrBatchNotFound) {
		return b, errf(http.StatusNotFound, "batch_not_found", "id", fmt.Sprintf("no batch %q", c.Param("id")))
	}
	return b, err
}

func (s *Server) getBatch(c echo.Context) error {
	b, err := s.batchOf(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, batchObject(b))
}

func (s *Server) listBatches(c echo.Context) error {
	limit, err := listLimit(c, 20, 100)
	if err != nil {
		return err
	}
	bs, more, err := s.store.ListBatches(c.Request().Context(), tenantOf(c), c.QueryParam("after"), limit)
	if err != nil {
		return err
	}
	data := make([]any, 0, len(bs))
	for _, b := range bs {
		data = append(data, batchObject(b))
	}
	return c.JSON(http.StatusOK, listObject(data, more))
}

// cancelBatch stops a batch's lines from becoming jobs at once; its running
// lines are canceled, and it ends cancelled with the output of the lines
// that completed (batchrun.go).
func (s *Server) cancelBatch(c echo.Context) error {
	b, err := s.batchOf(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	moved, err := s.jobs.MoveBatch(ctx, b.Tenant, b.ID, []string{store.BatchValidating, store.BatchInProgress}, store.BatchCancelling, time.Now())
	if err != nil {
		return err
	}
	if !moved && b.Status != store.BatchCancelling && b.Status != store.BatchCancelled {
		return errf(http.StatusConflict, "batch_ended", "id", fmt.Sprintf("batch %q is %s: it cannot be cancelled", b.ID, b.Status))
	}
	if b, err = s.store.GetBatch(ctx, b.Tenant, b.ID); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, batchObject(b))
}
