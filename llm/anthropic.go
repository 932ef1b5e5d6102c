package llm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/chatfleet/chatfleet/llm/carry"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
)

// anthropicMaxTokens bounds a reply; the Messages API requires a bound.
const anthropicMaxTokens = 4096

// Anthropic speaks the Anthropic Messages streaming API.
type Anthropic struct {
	name   string
	model  string
	client anthropic.Client
}

// NewAnthropic returns a provider for the Messages API at baseURL (empty: Anthropic's).
func NewAnthropic(name, baseURL, apiKey, model string, hc *http.Client) *Anthropic {
	opts := []option.RequestOption{option.WithMaxRetries(0), option.WithAPIKey(apiKey)}
	if baseURL != "" {
		opts = append(opts, option.WithBaseURL(baseURL))
	}
	if hc != nil {
		opts = append(opts, option.WithHTTPClient(hc))
	}
	return &Anthropic{name: name, model: model, client: anthropic.NewClient(opts...)}
}

// Name implements Provider.
func (p *Anthropic) Name() string { return p.name }

// Unsupported implements Carrier.
func (p *Anthropic) Unsupported(req Request) string {
	return carry.Unsupported("anthropic", req.Params)
}

// Stream implements Provider. Tools, tool choice, tool calls and results,
// images and JSON-schema output are translated to the Messages API's own.
func (p *Anthropic) Stream(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, error) {
	model := req.Model
	if model == "" {
		model = p.model
	}
	if f := p.Unsupported(req); f != "" {
		msg := f + " has no equivalent in the Anthropic Messages API"
		return Reply{}, &Error{Provider: p.name, Status: 400, RequestFault: msg, Msg: msg}
	}
	params, err := anthropicParams(model, req)
	if err != nil {
		return Reply{}, &Error{Provider: p.name, Status: 400, RequestFault: err.Error(), Msg: err.Error()}
	}
	s := p.client.Messages.NewStreaming(ctx, params)
	defer s.Close()

	var content strings.Builder
	var usage Usage
	replyModel, stop := model, ""
	calls := newToolCalls(onDelta)
	for s.Next() {
		ev := s.Current()
		switch ev.Type {
		case "message_start":
			if ev.Message.Model != "" {
				replyModel = string(ev.Message.Model)
			}
			usage.PromptTokens = int(ev.Message.Usage.InputTokens)
		case "content_block_start":
			if ev.ContentBlock.Type == "tool_use" {
				// The block's index names the call's later input_json_delta fragments.
				if err := calls.add(ev.Index, true, ev.ContentBlock.ID, ev.ContentBlock.Name, ""); err != nil {
					return Reply{}, err
				}
			}
		case "content_block_delta":
			switch ev.Delta.Type {
			case "input_json_delta":
				if err := calls.add(ev.Index, true, "", "", ev.Delta.PartialJSON); err != nil {
					return Reply{}, err
				}
			case "text_delta":
				if ev.Delta.Text == "" {
					continue
				}
				content.WriteString(ev.Delta.Text)
				if err := onDelta(Delta{Text: ev.Delta.Text}); err != nil {
					return Reply{}, err
				}
			}
		case "message_delta":
			stop = string(ev.Delta.StopReason)
			usage.CompletionTokens = int(ev.Usage.OutputTokens)
			if ev.Usage.InputTokens > 0 {
				usage.PromptTokens = int(ev.Usage.InputTokens)
			}
		}
	}
	if err := s.Err(); err != nil {
		return Reply{}, p.classify(ctx, err)
	}
	r := Reply{Content: content.String(), Model: replyModel, Asked: model, Usage: usage, FinishReason: FinishStop}
	if stop == "max_tokens" {
		r.FinishReason = FinishLength
	}
	if r.ToolCalls, err = calls.done(); err != nil {
		return Reply{}, err
	}
	if len(r.ToolCalls) > 0 {
		r.FinishReason = FinishToolCalls
	}
	if usage.CompletionTokens == 0 && r.Content != "" {
		r.Usage = estimateUsage(req, r.Content)
	}
	return r, nil
}

// anthropicParams is the Messages API request of a call.
func anthropicParams(model string, req Request) (anthropic.MessageNewParams, error) {
	gp := req.Params
	params := anthropic.MessageNewParams{Model: model, MaxTokens: anthropicMaxTokens}
	if gp.MaxTokens > 0 {
		params.MaxTokens = int64(gp.MaxTokens)
	}
	params.StopSequences = gp.Stop
	// This SDK's params have no temperature or top_p fields; the API takes them.
	extra := map[string]any{}
	if gp.Temperature != nil {
		extra["temperature"] = *gp.Temperature
	}
	if gp.TopP != nil {
		extra["top_p"] = *gp.TopP
	}
	if len(extra) > 0 {
		params.SetExtraFields(extra)
	}
	if gp.User != "" {
		params.Metadata.UserID = anthropic.String(gp.User)
	}
	if gp.ReasoningEffort != "" {
		params.OutputConfig.Effort = anthropic.OutputConfigEffort(gp.ReasoningEffort)
	}
	if rf := gp.ResponseFormat; rf != nil && rf.Type == "json_schema" && rf.JSONSchema != nil {
		if err := json.Unmarshal(rf.JSONSchema.Schema, &params.OutputConfig.Format.Schema); err != nil {
			return params, errors.New("response_format.json_schema.schema is not a JSON object")
		}
	}
	for _, t := range gp.Tools {
		tp := anthropic.ToolParam{Name: t.Function.Name}
		if t.Function.Description != "" {
			tp.Description = anthropic.String(t.Function.Description)
		}
		var schema map[string]any
		if len(t.Function.Parameters) > 0 {
			if err := json.Unmarshal(t.Function.Parameters, &schema); err != nil {
				return params, fmt.Errorf("tools: the parameters of %q are not a JSON object", t.Function.Name)
			}
		}
		tp.InputSchema.Properties = schema["properties"]
		if req, ok := schema["required"].([]any); ok {
			for _, r := range req {
				if s, ok := r.(string); ok {
					tp.InputSchema.Required = append(tp.InputSchema.Required, s)
				}
			}
		}
		delete(schema, "properties")
		delete(schema, "required")
		delete(schema, "type")
		if len(schema) > 0 {
			tp.InputSchema.ExtraFields = schema
		}
		params.Tools = append(params.Tools, anthropic.ToolUnionParam{OfTool: &tp})
	}
	if len(gp.Tools) > 0 {
		serial := gp.ParallelToolCalls != nil && !*gp.ParallelToolCalls
		mode, name := "auto", ""
		if gp.ToolChoice != nil {
			mode, name = gp.ToolChoice.Mode, gp.ToolChoice.Name
		}
		switch mode {
		case "required":
			params.ToolChoice.OfAny = &anthropic.ToolChoiceAnyParam{}
			if serial {
				params.ToolChoice.OfAny.DisableParallelToolUse = anthropic.Bool(true)
			}
		case "function":
			params.ToolChoice.OfTool = &anthropic.ToolChoiceToolParam{Name: name}
			if serial {
				params.ToolChoice.OfTool.DisableParallelToolUse = anthropic.Bool(true)
			}
		case "none":
			params.ToolChoice.OfNone = &anthropic.ToolChoiceNoneParam{}
		default:
			params.ToolChoice.OfAuto = &anthropic.ToolChoiceAutoParam{}
			if serial {
				params.ToolChoice.OfAuto.DisableParallelToolUse = anthropic.Bool(true)
			}
		}
	}
	for _, m := range req.Messages {
		switch m.Role {
		case "system":
			params.System = append(params.System, anthropic.TextBlockParam{Text: m.Content})
		case "assistant":
			var blocks []anthropic.ContentBlockParamUnion
			if m.Content != "" {
				blocks = append(blocks, anthropic.NewTextBlock(m.Content))
			}
			for _, tc := range m.ToolCalls {
				var input any = map[string]any{}
				if strings.TrimSpace(tc.Function.Arguments) != "" {
					if err := json.Unmarshal([]byte(tc.Function.Arguments), &input); err != nil {
						return params, fmt.Errorf("the arguments of tool call %q are not JSON", tc.ID)
					}
				}
				blocks = append(blocks, anthropic.NewToolUseBlock(tc.ID, input, tc.Function.Name))
			}
			params.Messages = append(params.Messages, anthropic.NewAssistantMessage(blocks...))
		case "tool":
			// Tool results are user content; consecutive ones share one message.
			block := anthropic.NewToolResultBlock(m.ToolCallID, m.Content, false)
			if n := len(params.Messages); n > 0 && params.Messages[n-1].OfUser != nil && params.Messages[n-1].OfUser.Content[0].OfToolResult != nil {
				u := params.Messages[n-1].OfUser
				u.Content = append(u.Content, block)
			} else {
				params.Messages = append(params.Messages, anthropic.NewUserMessage(block))
			}
		default:
			blocks, err := anthropicUserContent(m)
			if err != nil {
				return params, err
			}
			params.Messages = append(params.Messages, anthropic.NewUserMessage(blocks...))
		}
	}
	return params, nil
}

func anthropicUserContent(m Message) ([]anthropic.ContentBlockParamUnion, error) {
	if len(m.Parts) == 0 {
		return []anthropic.ContentBlockParamUnion{anthropic.NewTextBlock(m.Content)}, nil
	}
	var blocks []anthropic.ContentBlockParamUnion
	for _, part := range m.Parts {
		if part.Type != "image_url" {
			blocks = append(blocks, anthropic.NewTextBlock(part.Text))
			continue
		}
		if media, data, ok := part.Data(); ok {
			blocks = append(blocks, anthropic.NewImageBlockBase64(media, data))
		} else {
			blocks = append(blocks, anthropic.NewImageBlock(anthropic.URLImageSourceParam{URL: part.ImageURL}))
		}
	}
	return blocks, nil
}

func (p *Anthropic) classify(ctx context.Context, err error) error {
	var ae *anthropic.Error
	if errors.As(err, &ae) {
		return httpError(p.name, ae.StatusCode, ae.Response, ae.Message, ae.RawJSON())
	}
	return transportError(ctx, p.name, err)
}
