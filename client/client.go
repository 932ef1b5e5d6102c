// Package client is a Go client for chatfleet's jobs API: submit, read, wait,
// follow a job's events (resuming transparently after a dropped connection)
// and cancel.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client talks to one chatfleet API address (a load balancer or one node).
type Client struct {
	base   string
	apiKey string
	http   *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithAPIKey sends `Authorization: Bearer key` on every request.
func WithAPIKey(key string) Option { return func(c *Client) { c.apiKey = key } }

// WithHTTPClient replaces the HTTP client. It must not set a Timeout shorter
// than the streams and long polls it will carry; use contexts instead.
func WithHTTPClient(h *http.Client) Option { return func(c *Client) { c.http = h } }

// New returns a client for the API at baseURL, e.g. "http://localhost:8080".
func New(baseURL string, opts ...Option) *Client {
	c := &Client{base: strings.TrimRight(baseURL, "/"), http: &http.Client{}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Error is an error answer of the API.
type Error struct {
	Status     int
	Code       string `json:"code"`
	Message    string `json:"message"`
	Field      string `json:"field"`
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("chatfleet: %d %s (%s): %s", e.Status, e.Code, e.Field, e.Message)
	}
	return fmt.Sprintf("chatfleet: %d %s: %s", e.Status, e.Code, e.Message)
}

// Temporary reports whether trying again later may succeed.
func (e *Error) Temporary() bool {
	return e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests
}

// SubmitRequest is a chat job to submit.
type SubmitRequest struct {
	SessionID string         `json:"session_id"`
	Message   string         `json:"message,omitempty"` // may be left out when ToolResults answer the last turn
	Model     string         `json:"model,omitempty"`
	Priority  string         `json:"priority,omitempty"`
	Metadata  map[string]any `json:"metadata,omitempty"`
	// Tools, ToolChoice and ResponseFormat take OpenAI's Chat Completions
	// shapes (any value that marshals to them).
	Tools             []Tool       `json:"tools,omitempty"`
	ToolChoice        any          `json:"tool_choice,omitempty"`
	ParallelToolCalls *bool        `json:"parallel_tool_calls,omitempty"`
	ResponseFormat    any          `json:"response_format,omitempty"`
	ToolResults       []ToolResult `json:"tool_results,omitempty"`
	// WebhookURL is called back when the job ends, signed with the tenant's
	// webhook secret (docs/webhooks.md).
	WebhookURL string `json:"webhook_url,omitempty"`
	// IdempotencyKey makes a retried Submit land on the same job.
	IdempotencyKey string `json:"-"`
}

// Submitted is the answer to a submit.
type Submitted struct {
	JobID     string `json:"job_id"`
	Status    string `json:"status"`
	SessionID string `json:"session_id"`
	StatusURL string `json:"status_url"`
	StreamURL string `json:"stream_url"`
	// Replayed is true when the Idempotency-Key named an existing job.
	Replayed bool `json:"-"`
}

// Tool is a function the model may call.
type Tool struct {
	Type     string   `json:"type"` // function
	Function Function `json:"function"`
}

// Function describes a function tool; Parameters is its JSON Schema.
type Function struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Parameters  any    `json:"parameters,omitempty"`
	Strict      *bool  `json:"strict,omitempty"`
}

// ToolResult answers one tool call of the session's previous turn.
type ToolResult struct {
	ToolCallID string `json:"tool_call_id"`
	Content    string `json:"content"`
}

// ToolCall is a model's call of a function tool.
type ToolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// Result is a finished job's reply.
type Result struct {
	Content      string     `json:"content"`
	ToolCalls    []ToolCall `json:"tool_calls"`
	FinishReason string     `json:"finish_reason"` // stop, length or tool_calls
	Degraded     bool       `json:"degraded"`
	Provider     string     `json:"provider"`
	Model        string     `json:"model"`
}

// Usage counts a job's tokens.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// JobError says why a job failed.
type JobError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Job is a job as the API shows it.
type Job struct {
	JobID      string     `json:"job_id"`
	SessionID  string     `json:"session_id"`
	Status     string     `json:"status"`
	CreatedAt  *time.Time `json:"created_at"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	Attempts   int        `json:"attempts"`
	Result     *Result    `json:"result"`
	Usage      *Usage     `json:"usage"`
	Error      *JobError  `json:"error"`
	// Webhooks are the job's webhook deliveries, one per receiver.
	Webhooks []WebhookDelivery `json:"webhooks"`
}

// WebhookDelivery is how a job's webhook to one receiver went.
type WebhookDelivery struct {
	URL        string    `json:"url"`
	Event      string    `json:"event"`
	EventID    string    `json:"event_id"`
	State      string    `json:"state"` // pending, retrying, delivered, refused or gave_up
	Attempts   int       `json:"attempts"`
	StatusCode int       `json:"status_code"`
	Error      string    `json:"error"`
	At         time.Time `json:"at"`
}

// Finished reports whether the job has reached a final status.
func (j Job) Finished() bool {
	return j.Status == "succeeded" || j.Status == "failed" || j.Status == "canceled"
}

// Submit enqueues a chat job.
func (c *Client) Submit(ctx context.Context, r SubmitRequest) (Submitted, error) {
	var out Submitted
	h := http.Header{}
	if r.IdempotencyKey != "" {
		h.Set("Idempotency-Key", r.IdempotencyKey)
	}
	res, err := c.do(ctx, http.MethodPost, "/api/v1/chat/jobs", h, r, &out)
	if err != nil {
		return out, err
	}
	out.Replayed = res.Header.Get("Idempotent-Replayed") == "true"
	return out, nil
}

// Get reads a job.
func (c *Client) Get(ctx context.Context, id string) (Job, error) {
	var j Job
	_, err := c.do(ctx, http.MethodGet, "/api/v1/chat/jobs/"+url.PathEscape(id), nil, nil, &j)
	return j, err
}

// Wait long-polls until the job has finished or ctx ends. A 503 (the fleet
// briefly unavailable) or 429 (the tenant at its cap of held connections) is
// waited out as its Retry-After asks: the job goes on meanwhile.
func (c *Client) Wait(ctx context.Context, id string) (Job, error) {
	for {
		var j Job
		_, err := c.do(ctx, http.MethodGet, "/api/v1/chat/jobs/"+url.PathEscape(id)+"?wait=30s", nil, nil, &j)
		var e *Error
		if errors.As(err, &e) && (e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests) {
			// The fleet is briefly unavailable or the tenant at its cap:
			// the job goes on; so does the wait, after the asked pause.
			select {
			case <-ctx.Done():
				return j, err
			case <-time.After(max(e.RetryAfter, 100*time.Millisecond)):
			}
			continue
		}
		if err != nil || j.Finished() {
			return j, err
		}
	}
}

// Cancel stops a job; a finished job answers an *Error with Status 409.
func (c *Client) Cancel(ctx context.Context, id string) (Job, error) {
	var j Job
	_, err := c.do(ctx, http.MethodPost, "/api/v1/chat/jobs/"+url.PathEscape(id)+"/cancel", nil, nil, &j)
	return j, err
}

// Message is one entry of a session's history.
type Message struct {
	Role       string     `json:"role"` // user, assistant or tool
	Content    string     `json:"content"`
	ToolCalls  []ToolCall `json:"tool_calls"`
	ToolCallID string     `json:"tool_call_id"`
	JobID      string     `json:"job_id"`
	CreatedAt  time.Time  `json:"created_at"`
}

// History reads a session's conversation, oldest first.
func (c *Client) History(ctx context.Context, sessionID string) ([]Message, error) {
	var out struct {
		Messages []Message `json:"messages"`
	}
	_, err := c.do(ctx, http.MethodGet, "/api/v1/sessions/"+url.PathEscape(sessionID)+"/messages", nil, nil, &out)
	return out.Messages, err
}

func (c *Client) newRequest(ctx context.Context, method, path string, h http.Header, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	return req, nil
}

func (c *Client) do(ctx context.Context, method, path string, h http.Header, body, out any) (*http.Response, error) {
	req, err := c.newRequest(ctx, method, path, h, body)
	if err != nil {
		return nil, err
	}
	res, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode >= 300 {
		return res, decodeError(res)
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		return res, fmt.Errorf("chatfleet: decode %s %s answer: %w", method, path, err)
	}
	return res, nil
}

func decodeError(res *http.Response) error {
	var body struct {
		Error Error `json:"error"`
	}
	raw, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err := json.Unmarshal(raw, &body); err != nil || body.Error.Code == "" {
		body.Error = Error{Code: "http_error", Message: strings.TrimSpace(string(raw))}
	}
	e := body.Error
	e.Status = res.StatusCode
	if s, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return &e
}

// IsStatus reports whether err is an API error with the given status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}
