package api

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/tasks"
)

// Input limits. Unknown fields are rejected, so a typo such as "mesage" is an
// error naming the field instead of a silently empty message.
const (
	maxBodyBytes      = 256 << 10 // tool schemas make agent requests large
	maxMessageBytes   = 32 << 10
	maxSessionIDLen   = 128
	maxModelLen       = 128
	maxMetadataBytes  = 4 << 10
	maxMetadataDepth  = 5
	maxIdempotencyKey = 255
)

type submitRequest struct {
	SessionID         string          `json:"session_id"`
	Message           string          `json:"message"`
	Model             string          `json:"model"`
	Priority          string          `json:"priority"`
	Metadata          json.RawMessage `json:"metadata"`
	Tools             json.RawMessage `json:"tools"`
	ToolChoice        json.RawMessage `json:"tool_choice"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls"`
	ResponseFormat    json.RawMessage `json:"response_format"`
	ToolResults       []toolResult    `json:"tool_results"`
	WebhookURL        string          `json:"webhook_url"`

	params  *tasks.GenParams    // tools, tool choice and response format, validated
	results []tasks.ChatMessage // tool_results as tool messages
}

// toolResult answers one tool call of the session's previous turn.
type toolResult struct {
	ToolCallID string `json:"tool_call_id"`
	Content    string `json:"content"`
}

// readJSON reads a size-limited, UTF-8, application/json body into dst,
// rejecting unknown fields and trailing data.
func readJSON(c echo.Context, dst any) error {
	r := c.Request()
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return errf(http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type", "Content-Type must be application/json")
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return errf(http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type", "charset must be utf-8")
	}
	body, err := readBody(c, maxBodyBytes)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, "body_too_large", "body", fmt.Sprintf("body must be at most %d bytes", maxBodyBytes))
		}
		return errf(http.StatusBadRequest, "bad_body", "body", "could not read the request body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return errf(http.StatusBadRequest, "invalid_json", "body", "body is empty; expected a JSON object")
	}
	if !utf8.Valid(body) {
		return errf(http.StatusBadRequest, "invalid_utf8", "body", "body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return errf(http.StatusBadRequest, "invalid_json", "body", "body has data after the JSON object")
	}
	return nil
}

// readBody reads a request body of at most max bytes. With a
// Content-Length it reads into a buffer of that size: io.ReadAll's growing
// buffer allocates about twice a large body before it is done.
func readBody(c echo.Context, max int64) ([]byte, error) {
	r := c.Request()
	body := http.MaxBytesReader(c.Response(), r.Body, max)
	if n := r.ContentLength; n >= 0 && n <= max {
		buf := make([]byte, n)
		if _, err := io.ReadFull(body, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	return io.ReadAll(body)
}

func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return errf(http.StatusBadRequest, "invalid_json", "body", fmt.Sprintf("malformed JSON at byte %d", se.Offset))
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "body"
		}
		return errf(http.StatusBadRequest, "invalid_type", field, fmt.Sprintf("%s must be a %s, got %s", field, jsonKind(te.Type.Kind().String()), te.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		field := cmp.Or(name, "body") // an empty key names no field of its own
		return errf(http.StatusBadRequest, "unknown_field", field, fmt.Sprintf("unknown field %q", name))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errf(http.StatusBadRequest, "invalid_json", "body", "body ends before the JSON is complete")
	}
	return errf(http.StatusBadRequest, "invalid_json", "body", "body is not a JSON object")
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "string"
	case "map", "struct":
		return "JSON object"
	case "slice", "array":
		return "JSON array"
	}
	return k
}

func invalid(field, msg string) *Error {
	return errf(http.StatusUnprocessableEntity, "invalid_field", field, field+": "+msg)
}

// validate checks fields and fills defaults.
func (r *submitRequest) validate() error {
	if err := validSessionID(r.SessionID); err != nil {
		return err
	}
	if strings.TrimSpace(r.Message) == "" && (r.Message != "" || len(r.ToolResults) == 0) {
		return invalid("message", "is required and must not be blank (it may be left out when tool_results answer the last turn)")
	}
	if len(r.Message) > maxMessageBytes {
		return invalid("message", fmt.Sprintf("must be at most %d bytes", maxMessageBytes))
	}
	if strings.ContainsRune(r.Message, 0) {
		return invalid("message", "must not contain NUL characters")
	}
	if len(r.Model) > maxModelLen || strings.ContainsFunc(r.Model, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return invalid("model", fmt.Sprintf("must be at most %d characters without spaces or control characters", maxModelLen))
	}
	if r.Priority == "" {
		r.Priority = tasks.PriorityNormal
	}
	if !tasks.ValidPriority(r.Priority) {
		return invalid("priority", fmt.Sprintf("must be high, normal or low, got %q", r.Priority))
	}
	if err := r.validContract(); err != nil {
		return err
	}
	if r.WebhookURL != "" {
		if err := tasks.ValidWebhookURL(r.WebhookURL); err != nil {
			return invalid("webhook_url", err.Error())
		}
	}
	return r.validMetadata()
}

// validContract checks tools, tool choice, response format and tool results
// (OpenAI's Chat Completions shapes).
func (r *submitRequest) validContract() error {
	if len(r.ToolResults) > maxToolResults {
		return invalid("tool_results", fmt.Sprintf("at most %d", maxToolResults))
	}
	total := len(r.Message)
	r.results = nil
	for i, tr := range r.ToolResults {
		f := fmt.Sprintf("tool_results[%d]", i)
		if tr.ToolCallID == "" || len(tr.ToolCallID) > 256 {
			return invalid(f+".tool_call_id", "is required (at most 256 characters)")
		}
		if strings.ContainsRune(tr.Content, 0) {
			return invalid(f+".content", "must not contain NUL characters")
		}
		total += len(tr.Content)
		r.results = append(r.results, tasks.ChatMessage{Role: "tool", ToolCallID: tr.ToolCallID, Content: tr.Content})
	}
	if total > maxMessageBytes {
		return invalid("tool_results", fmt.Sprintf("message and tool results hold at most %d bytes", maxMessageBytes))
	}
	p := &tasks.GenParams{ParallelToolCalls: r.ParallelToolCalls}
	var err error
	if p.Tools, err = parseTools(rawJSON(r.Tools), "tools"); err != nil {
		return unprocessable(err)
	}
	if p.ToolChoice, err = parseToolChoice(rawJSON(r.ToolChoice), "tool_choice", p.Tools); err != nil {
		return unprocessable(err)
	}
	if p.ResponseFormat, err = parseResponseFormat(rawJSON(r.ResponseFormat), "response_format", false); err != nil {
		return unprocessable(err)
	}
	r.params = nil
	if len(p.Tools) > 0 || p.ToolChoice != nil || p.ResponseFormat != nil || p.ParallelToolCalls != nil {
		r.params = p
	}
	return nil
}

// unprocessable turns a contract error into the jobs API's 422 naming the field.
func unprocessable(err error) error {
	var ae *Error
	if errors.As(err, &ae) {
		return errf(http.StatusUnprocessableEntity, "invalid_field", ae.Field, ae.Message)
	}
	return err
}

func (r *submitRequest) validMetadata() error {
	m := bytes.TrimSpace(r.Metadata)
	if len(m) == 0 || bytes.Equal(m, []byte("null")) {
		r.Metadata = nil
		return nil
	}
	if m[0] != '{' {
		return errf(http.StatusBadRequest, "invalid_type", "metadata", "metadata must be a JSON object")
	}
	if len(m) > maxMetadataBytes {
		return invalid("metadata", fmt.Sprintf("must be at most %d bytes", maxMetadataBytes))
	}
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, b := range m {
		switch {
		case escaped:
			escaped = false
		case inString && b == '\\':
			escaped = true
		case b == '"':
			inString = !inString
		case inString:
		case b == '{' || b == '[':
			depth++
			deepest = max(deepest, depth)
		case b == '}' || b == ']':
			depth--
		}
	}
	if deepest > maxMetadataDepth {
		return invalid("metadata", fmt.Sprintf("must nest at most %d levels deep", maxMetadataDepth))
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, m); err != nil {
		return errf(http.StatusBadRequest, "invalid_json", "metadata", "metadata is not valid JSON")
	}
	r.Metadata = buf.Bytes()
	return nil
}

// hash identifies the request's content for Idempotency-Key comparison.
// Metadata is re-encoded so that key order and spacing do not matter.
func (r *submitRequest) hash() string {
	var meta any
	_ = json.Unmarshal(r.Metadata, &meta)
	fields := []any{r.SessionID, r.Message, r.Model, r.Priority, meta, r.params, r.ToolResults}
	if r.WebhookURL != "" { // only then: keys used before webhooks keep their hashes
		fields = append(fields, r.WebhookURL)
	}
	b, _ := json.Marshal(fields)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func validSessionID(s string) error {
	if s == "" {
		return invalid("session_id", "is required")
	}
	if len(s) > maxSessionIDLen {
		return invalid("session_id", fmt.Sprintf("must be at most %d characters", maxSessionIDLen))
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.' || r == ':') {
			return invalid("session_id", "may contain only letters, digits, '_', '-', '.' and ':'")
		}
	}
	return nil
}

func validIdempotencyKey(k string) error {
	if len(k) > maxIdempotencyKey {
		return errf(http.StatusBadRequest, "invalid_header", "Idempotency-Key", fmt.Sprintf("Idempotency-Key must be at most %d characters", maxIdempotencyKey))
	}
	for _, r := range k {
		if r < 0x21 || r > 0x7e {
			return errf(http.StatusBadRequest, "invalid_header", "Idempotency-Key", "Idempotency-Key must be printable ASCII without spaces")
		}
	}
	return nil
}
