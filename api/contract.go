package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/chatfleet/chatfleet/llm/carry"
	"github.com/chatfleet/chatfleet/tasks"
)

// The chat contract's parts that every front door takes in OpenAI's shapes:
// function tools, tool choice, response formats and image parts. Each
// validator names the field it refuses (prefix is where it stands in the
// request) and answers 400, the status both OpenAI and the jobs API use
// for a malformed request.

// Limits of the chat contract's parts. Images travel in the job's payload
// (a data URL is the image itself), so they set the /v1 body limit.
const (
	maxTools        = 128
	maxSchemaBytes  = 64 << 10 // one tool's parameters or one response schema
	maxImages       = 16
	maxImageURLLen  = 8 << 10  // an https URL
	maxOpenAIBody   = 10 << 20 // a /v1 body: images as data URLs
	maxImageData    = 8 << 20  // the data URLs of one request, together
	maxToolResults  = 128
	maxToolCallArgs = 64 << 10
	maxInputText    = 4 * maxMessageBytes // the text of a /v1 conversation (Responses: instructions included)
)

var toolName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

func contractErr(field, msg string) *Error {
	return errf(http.StatusBadRequest, "invalid_request_error", field, field+": "+msg)
}

// isNull reports whether a raw JSON value is absent or null.
func isNull(raw rawJSON) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// parseTools reads Chat Completions tools: [{"type":"function","function":{…}}].
func parseTools(raw rawJSON, field string) ([]tasks.Tool, error) {
	if isNull(raw) {
		return nil, nil
	}
	var items []rawJSON
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, contractErr(field, "must be an array of tools")
	}
	if len(items) > maxTools {
		return nil, contractErr(field, fmt.Sprintf("at most %d tools", maxTools))
	}
	out := make([]tasks.Tool, 0, len(items))
	for i, item := range items {
		f := fmt.Sprintf("%s[%d]", field, i)
		var t struct {
			Type     string  `json:"type"`
			Function rawJSON `json:"function"`
		}
		if err := json.Unmarshal(item, &t); err != nil {
			return nil, contractErr(f, "must be a tool object")
		}
		if t.Type != "function" {
			return nil, contractErr(f+".type", fmt.Sprintf("tool type %q is not supported (function only)", t.Type))
		}
		def, err := parseFunctionDef(t.Function, f+".function")
		if err != nil {
			return nil, err
		}
		out = append(out, tasks.Tool{Type: "function", Function: def})
	}
	if err := uniqueToolNames(out, field); err != nil {
		return nil, err
	}
	return out, nil
}

func parseFunctionDef(raw rawJSON, field string) (tasks.FunctionDef, error) {
	var d struct {
		Name        string  `json:"name"`
		Description string  `json:"description"`
		Parameters  rawJSON `json:"parameters"`
		Strict      *bool   `json:"strict"`
	}
	if isNull(raw) || json.Unmarshal(raw, &d) != nil {
		return tasks.FunctionDef{}, contractErr(field, "must be a function object with a name")
	}
	def := tasks.FunctionDef{Name: d.Name, Description: d.Description, Strict: d.Strict}
	if !toolName.MatchString(d.Name) {
		return def, contractErr(field+".name", "must be 1 to 64 letters, digits, '_' or '-'")
	}
	if !isNull(d.Parameters) {
		p, err := jsonObject(d.Parameters, field+".parameters")
		if err != nil {
			return def, err
		}
		def.Parameters = p
	}
	return def, nil
}

func uniqueToolNames(tools []tasks.Tool, field string) error {
	seen := map[string]bool{}
	for i, t := range tools {
		if seen[t.Function.Name] {
			return contractErr(fmt.Sprintf("%s[%d]", field, i), fmt.Sprintf("two tools are named %q", t.Function.Name))
		}
		seen[t.Function.Name] = true
	}
	return nil
}

// jsonObject checks that raw is a JSON object of at most maxSchemaBytes and
// keeps it as sent. A valid JSON value that opens with '{' is an object: no
// need to build it (a 64 KiB schema of 500 properties was 4,000 allocations).
func jsonObject(raw rawJSON, field string) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > maxSchemaBytes {
		return nil, contractErr(field, fmt.Sprintf("must be at most %d bytes", maxSchemaBytes))
	}
	if raw[0] != '{' || !json.Valid(raw) {
		return nil, contractErr(field, "must be a JSON Schema object")
	}
	return json.RawMessage(raw), nil
}

// parseToolChoice reads "none", "auto", "required" or
// {"type":"function","function":{"name"}} (Chat Completions) or
// {"type":"function","name"} (Responses).
func parseToolChoice(raw rawJSON, field string, tools []tasks.Tool) (*tasks.ToolChoice, error) {
	if isNull(raw) {
		return nil, nil
	}
	var mode string
	if json.Unmarshal(raw, &mode) == nil {
		switch mode {
		case "none", "auto":
		case "required":
			if len(tools) == 0 {
				return nil, contractErr(field, `"required" needs tools`)
			}
		default:
			return nil, contractErr(field, fmt.Sprintf("%q is not a tool choice (none, auto, required or a function)", mode))
		}
		return &tasks.ToolChoice{Mode: mode}, nil
	}
	var named struct {
		Type     string `json:"type"`
		Name     string `json:"name"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &named); err != nil || named.Type != "function" {
		return nil, contractErr(field, `must be "none", "auto", "required" or a function tool choice`)
	}
	name := named.Function.Name
	if name == "" {
		name = named.Name
	}
	for _, t := range tools {
		if t.Function.Name == name {
			return &tasks.ToolChoice{Mode: "function", Name: name}, nil
		}
	}
	return nil, contractErr(field, fmt.Sprintf("names the function %q, which is not among the tools", name))
}

// parseResponseFormat reads {"type":"text"|"json_object"|"json_schema",
// "json_schema":{…}} (Chat Completions) or, with flat, the Responses
// text.format shape {"type":"json_schema","name","schema","strict"}.
func parseResponseFormat(raw rawJSON, field string, flat bool) (*tasks.ResponseFormat, error) {
	if isNull(raw) {
		return nil, nil
	}
	var rf struct {
		Type       string  `json:"type"`
		JSONSchema rawJSON `json:"json_schema"`
	}
	if err := json.Unmarshal(raw, &rf); err != nil {
		return nil, contractErr(field, "must be a response format object")
	}
	switch rf.Type {
	case "text", "json_object":
		return &tasks.ResponseFormat{Type: rf.Type}, nil
	case "json_schema":
	default:
		return nil, contractErr(field+".type", fmt.Sprintf("%q is not a response format (text, json_object, json_schema)", rf.Type))
	}
	body, inner := rf.JSONSchema, field+".json_schema"
	if flat {
		body, inner = raw, field
	}
	var js struct {
		Name        string  `json:"name"`
		Description string  `json:"description"`
		Schema      rawJSON `json:"schema"`
		Strict      *bool   `json:"strict"`
	}
	if isNull(body) || json.Unmarshal(body, &js) != nil {
		return nil, contractErr(inner, "is required with type json_schema")
	}
	if !toolName.MatchString(js.Name) {
		return nil, contractErr(inner+".name", "must be 1 to 64 letters, digits, '_' or '-'")
	}
	out := &tasks.JSONSchema{Name: js.Name, Description: js.Description, Strict: js.Strict}
	if !isNull(js.Schema) {
		s, err := jsonObject(js.Schema, inner+".schema")
		if err != nil {
			return nil, err
		}
		out.Schema = s
	}
	return &tasks.ResponseFormat{Type: "json_schema", JSONSchema: out}, nil
}

// validEffort checks a reasoning effort ("" for none given).
func validEffort(effort, field string) error {
	switch effort {
	case "", "none", "minimal", "low", "medium", "high", "xhigh":
		return nil
	}
	return contractErr(field, fmt.Sprintf("%q is not a reasoning effort (none, minimal, low, medium, high, xhigh)", effort))
}

// imageBudget counts a request's images against its limits.
type imageBudget struct{ count, dataBytes int }

// image checks an image URL: https, or a base64 data URL of an image.
func (b *imageBudget) image(url, detail, field string) (tasks.ContentPart, error) {
	b.count++
	if b.count > maxImages {
		return tasks.ContentPart{}, contractErr(field, fmt.Sprintf("at most %d images a request", maxImages))
	}
	switch detail {
	case "", "auto", "low", "high":
	default:
		return tasks.ContentPart{}, contractErr(field+".detail", "must be auto, low or high")
	}
	switch {
	case strings.HasPrefix(url, "https://"):
		if len(url) > maxImageURLLen {
			return tasks.ContentPart{}, contractErr(field, fmt.Sprintf("an image URL is at most %d bytes", maxImageURLLen))
		}
	case strings.HasPrefix(url, "data:"):
		media, _, ok := tasks.ContentPart{ImageURL: url}.Data()
		if !ok || !strings.HasPrefix(media, "image/") {
			return tasks.ContentPart{}, contractErr(field, "a data URL must be data:image/<type>;base64,<data>")
		}
		b.dataBytes += len(url)
		if b.dataBytes > maxImageData {
			return tasks.ContentPart{}, contractErr(field, fmt.Sprintf("the images of a request hold at most %d bytes", maxImageData))
		}
	default:
		return tasks.ContentPart{}, contractErr(field, "an image must be an https URL or a data URL")
	}
	return tasks.ContentPart{Type: "image_url", ImageURL: url, Detail: detail}, nil
}

// userContent is the text of parts and the parts themselves when they hold
// an image (nil when text alone).
func userContent(parts []tasks.ContentPart) (string, []tasks.ContentPart) {
	var b strings.Builder
	images := false
	for _, p := range parts {
		if p.Type == "image_url" {
			images = true
		}
		b.WriteString(p.Text)
	}
	if !images {
		return b.String(), nil
	}
	return b.String(), parts
}

// parseToolCalls reads an assistant message's Chat Completions tool_calls.
func parseToolCalls(raw rawJSON, field string) ([]tasks.ToolCall, error) {
	if isNull(raw) {
		return nil, nil
	}
	var calls []tasks.ToolCall
	if err := json.Unmarshal(raw, &calls); err != nil {
		return nil, contractErr(field, "must be an array of function tool calls")
	}
	for i := range calls {
		if err := validToolCall(&calls[i], fmt.Sprintf("%s[%d]", field, i)); err != nil {
			return nil, err
		}
	}
	return calls, nil
}

func validToolCall(c *tasks.ToolCall, field string) error {
	if c.Type == "" {
		c.Type = "function"
	}
	switch {
	case c.Type != "function":
		return contractErr(field+".type", "must be function")
	case c.ID == "" || len(c.ID) > 256:
		return contractErr(field+".id", "is required (at most 256 characters)")
	case !toolName.MatchString(c.Function.Name):
		return contractErr(field+".function.name", "must be 1 to 64 letters, digits, '_' or '-'")
	case len(c.Function.Arguments) > maxToolCallArgs:
		return contractErr(field+".function.arguments", fmt.Sprintf("must be at most %d bytes", maxToolCallArgs))
	}
	return nil
}

// refusedBy names the field of p that no deployment of the model (nor of
// its fallbacks) can carry (the first's reason), as the front door's
// request names it (names maps the Chat Completions name to the front
// door's own where they differ). Workers check again: their configuration
// is the one that counts.
func (s *Server) refusedBy(model string, p *tasks.GenParams, names map[string]string) error {
	kinds := s.kinds(model)
	if p == nil || len(kinds) == 0 {
		return nil
	}
	first := ""
	for _, kind := range kinds {
		f := carry.Unsupported(kind, *p)
		if f == "" {
			return nil
		}
		if first == "" {
			first = f
		}
	}
	field := first
	if n, ok := names[first]; ok {
		field = n
	}
	return contractErr(field, fmt.Sprintf("no configured provider (%s) has an equivalent for %s", strings.Join(kinds, ", "), first))
}

// OpenAI's documented limits on the fields both /v1 doors share.
const (
	maxMetadataPairs = 16
	maxMetadataKey   = 64  // characters
	maxMetadataValue = 512 // characters
	maxUserLen       = 256 // characters: an end user's id, not a document
)

// validShared checks the model, user and metadata of a /v1 request; a 400
// names the field.
func validShared(model, user string, metadata map[string]string) error {
	if len(model) > maxModelLen || strings.ContainsFunc(model, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return oaInvalid("model", fmt.Sprintf("model must be at most %d characters, without spaces or control characters", maxModelLen))
	}
	if utf8.RuneCountInString(user) > maxUserLen || strings.ContainsFunc(user, unicode.IsControl) {
		return oaInvalid("user", fmt.Sprintf("user must be at most %d characters, without control characters", maxUserLen))
	}
	if len(metadata) > maxMetadataPairs {
		return oaInvalid("metadata", fmt.Sprintf("metadata holds at most %d pairs", maxMetadataPairs))
	}
	for k, v := range metadata {
		if utf8.RuneCountInString(k) > maxMetadataKey {
			return oaInvalid("metadata", fmt.Sprintf("metadata keys are at most %d characters", maxMetadataKey))
		}
		if utf8.RuneCountInString(v) > maxMetadataValue {
			return oaInvalid("metadata", fmt.Sprintf("metadata values are at most %d characters (key %q)", maxMetadataValue, k))
		}
	}
	return nil
}

// rawJSON is a JSON value of a request, decoded without a copy: it points
// into the body, which readBody allocated for this request alone.
// encoding/json's Unmarshal hands an Unmarshaler a slice of its input, and
// json.RawMessage copies it: an 8 MB body of tool schemas went through five
// such copies. Decode into it with json.Unmarshal only (a Decoder reuses its
// buffer).
type rawJSON []byte

func (r *rawJSON) UnmarshalJSON(b []byte) error {
	*r = b
	return nil
}

func (r rawJSON) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte("null"), nil
	}
	return r, nil
}
