package api

// Reading a Chat Completions request: which fields are carried, which are
// refused, and the conversation and parameters they make.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/tasks"
)

// oaFields are the Chat Completions request fields and what becomes of
// each: carried to the provider, or answered here (stream, stream_options,
// n of 1, modalities of text, logprobs false). Any other field with a value
// is a 400 naming it: nothing is dropped silently.
var oaFields = []string{"model", "messages", "stream", "stream_options", "n", "modalities", "logprobs",
	"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
	"logit_bias", "reasoning_effort", "user", "metadata", "store", "tools", "tool_choice", "parallel_tool_calls", "response_format"}

type oaMessage struct {
	Role       string  `json:"role"`
	Content    rawJSON `json:"content"`
	Name       string  `json:"name"`
	ToolCalls  rawJSON `json:"tool_calls"`
	ToolCallID string  `json:"tool_call_id"`
	Refusal    *string `json:"refusal"`
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
	Stop                rawJSON           `json:"stop"`
	Seed                *int64            `json:"seed"`
	PresencePenalty     *float64          `json:"presence_penalty"`
	FrequencyPenalty    *float64          `json:"frequency_penalty"`
	LogitBias           map[string]int    `json:"logit_bias"`
	ReasoningEffort     string            `json:"reasoning_effort"`
	User                string            `json:"user"`
	Metadata            map[string]string `json:"metadata"`
	Store               *bool             `json:"store"`
	Tools               rawJSON           `json:"tools"`
	ToolChoice          rawJSON           `json:"tool_choice"`
	ParallelToolCalls   *bool             `json:"parallel_tool_calls"`
	ResponseFormat      rawJSON           `json:"response_format"`
}

func oaInvalid(param, msg string) *Error {
	return errf(http.StatusBadRequest, "invalid_request_error", param, msg)
}

// readOpenAIBody reads a /v1 request body: conversations, and images as
// data URLs, make them larger than the jobs API's.
func readOpenAIBody(c echo.Context) ([]byte, error) {
	body, err := readBody(c, maxOpenAIBody)
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
	return decodeKnown(body, dst, known, what)
}

// decodeKnown is readKnown's decoding of a body read already (a batch's line).
func decodeKnown(body []byte, dst any, known []string, what string) error {
	var fields map[string]rawJSON
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
	if total > maxInputText {
		return nil, oaInvalid("messages", fmt.Sprintf("messages hold more than %d bytes of text", maxInputText))
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
func textContent(raw rawJSON, field string) (string, error) {
	parts, err := chatParts(raw, field, nil)
	if err != nil {
		return "", err
	}
	text, _ := userContent(parts)
	return text, nil
}

// chatParts reads content: a string, null, or an array of text parts and
// (when images is not nil) image_url parts.
func chatParts(raw rawJSON, field string, images *imageBudget) ([]tasks.ContentPart, error) {
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
	if err := validEffort(r.ReasoningEffort, "reasoning_effort"); err != nil {
		return nil, err
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
