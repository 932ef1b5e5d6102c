package api

// Reading a Responses request: its fields, tools, text format and input items.

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/tasks"
)

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
	Input              rawJSON           `json:"input"`
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
	Tools              rawJSON           `json:"tools"`
	ToolChoice         rawJSON           `json:"tool_choice"`
	ParallelToolCalls  *bool             `json:"parallel_tool_calls"`
	Text               rawJSON           `json:"text"`
	Reasoning          rawJSON           `json:"reasoning"`
	Truncation         string            `json:"truncation"`
}

// inputItem is one item of a response's input, as input_items lists it: a
// message, a function_call or a function_call_output. In the record, an
// item whose content (or output) is exactly one of the input's chat messages
// names that message (itemMessage: its index) instead of holding it twice;
// fullItems puts the content back.
type inputItem = map[string]any

// itemMessage is the key of an item's message in the record.
const itemMessage = "message"

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
			Format    rawJSON `json:"format"`
			Verbosity *string `json:"verbosity"`
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
			Effort  string  `json:"effort"`
			Summary rawJSON `json:"summary"`
		}
		if err := json.Unmarshal(r.Reasoning, &rs); err != nil {
			return nil, oaInvalid("reasoning", "reasoning must be an object")
		}
		if !isNull(rs.Summary) {
			return nil, oaInvalid("reasoning.summary", "reasoning summaries are not supported by this server")
		}
		if err := validEffort(rs.Effort, "reasoning.effort"); err != nil {
			return nil, err
		}
		p.ReasoningEffort = rs.Effort
	}
	return p, nil
}

// respTools reads Responses function tools: [{"type":"function","name",…}].
func respTools(raw rawJSON) ([]tasks.Tool, error) {
	if isNull(raw) {
		return nil, nil
	}
	var items []rawJSON
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
func parseInput(raw rawJSON, jobID string, instructions int) ([]inputItem, []tasks.ChatMessage, error) {
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
		Type      string  `json:"type"`
		Role      string  `json:"role"`
		Content   rawJSON `json:"content"`
		CallID    string  `json:"call_id"`
		Name      string  `json:"name"`
		Arguments string  `json:"arguments"`
		Output    rawJSON `json:"output"`
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
			out = append(out, inputItem{"id": "fco_" + id, "type": "function_call_output", "call_id": it.CallID, itemMessage: len(msgs), "status": "completed"})
			msgs = append(msgs, tasks.ChatMessage{Role: "tool", ToolCallID: it.CallID, Content: output})
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
		shown := shownParts(parts)
		item := inputItem{"id": "msg_" + id, "type": "message", "role": it.Role, "status": "completed", "content": shown}
		if withImages != nil || len(parts) == 1 { // the message holds the parts, or the one text, as they were
			delete(item, "content")
			item[itemMessage] = len(msgs)
		}
		out = append(out, item)
		msgs = append(msgs, tasks.ChatMessage{Role: role, Content: text, Parts: withImages})
	}
	if total+instructions > maxInputText {
		return nil, nil, oaInvalid("input", fmt.Sprintf("input and instructions hold more than %d bytes of text", maxInputText))
	}
	if err := lastTurn(msgs, "input"); err != nil {
		return nil, nil, oaInvalid("input", "the last input item must be a non-empty user message or a function_call_output")
	}
	return out, msgs, nil
}

// shownParts is a message item's content as input_items lists it.
func shownParts(parts []tasks.ContentPart) []map[string]any {
	shown := make([]map[string]any, 0, len(parts))
	for _, p := range parts {
		if p.Type == "image_url" {
			shown = append(shown, map[string]any{"type": "input_image", "image_url": p.ImageURL, "detail": cmp.Or(p.Detail, "auto")})
		} else {
			shown = append(shown, map[string]any{"type": "input_text", "text": p.Text})
		}
	}
	return shown
}

// fullItems returns a record's input items with the content that each took
// from the record's messages put back.
func fullItems(r respRecord) []inputItem {
	out := make([]inputItem, 0, len(r.Input))
	for _, it := range r.Input {
		k, ok := it[itemMessage].(float64) // a number read back from JSON
		if !ok || k < 0 || int(k) >= len(r.Messages) {
			out = append(out, it)
			continue
		}
		m := r.Messages[int(k)]
		full := maps.Clone(it)
		delete(full, itemMessage)
		switch {
		case it["type"] == "function_call_output":
			full["output"] = m.Content
		case m.Parts != nil:
			full["content"] = shownParts(m.Parts)
		default:
			full["content"] = shownParts([]tasks.ContentPart{{Type: "text", Text: m.Content}})
		}
		out = append(out, full)
	}
	return out
}

// respParts reads a message item's content: a string, or input_text and
// input_image parts (output_text in an assistant's).
func respParts(raw rawJSON, field, role string, images *imageBudget) ([]tasks.ContentPart, error) {
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
