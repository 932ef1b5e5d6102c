package llm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/chatfleet/chatfleet/llm/carry"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

// OpenAI speaks the OpenAI Chat Completions streaming wire format: OpenAI
// itself, vLLM, Ollama, llama.cpp server, LiteLLM, OpenRouter and the like.
type OpenAI struct {
	name   string
	model  string
	client openai.Client
}

// NewOpenAI returns a provider for the server at baseURL. Retries are left
// to the pipeline (the SDK's own are off), so every call is one upstream request.
func NewOpenAI(name, baseURL, apiKey, model string, hc *http.Client) *OpenAI {
	opts := []option.RequestOption{option.WithMaxRetries(0), option.WithAPIKey(apiKey)}
	if baseURL != "" {
		opts = append(opts, option.WithBaseURL(baseURL))
	}
	if hc != nil {
		opts = append(opts, option.WithHTTPClient(hc))
	}
	return &OpenAI{name: name, model: model, client: openai.NewClient(opts...)}
}

// Name implements Provider.
func (p *OpenAI) Name() string { return p.name }

// Unsupported implements Carrier.
func (p *OpenAI) Unsupported(req Request) string { return carry.Unsupported("openai", req.Params) }

// Stream implements Provider. Everything the request carries goes upstream:
// tools, tool choice, tool calls and results, images, response format and
// the generation parameters.
func (p *OpenAI) Stream(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, error) {
	model := req.Model
	if model == "" {
		model = p.model
	}
	params, err := openAIParams(model, req)
	if err != nil {
		return Reply{}, &Error{Provider: p.name, Status: 400, RequestFault: err.Error(), Msg: err.Error()}
	}
	s := p.client.Chat.Completions.NewStreaming(ctx, params)
	defer s.Close()

	var content []byte
	var usage *Usage
	replyModel, finish := model, ""
	calls := newToolCalls(onDelta)
	for s.Next() {
		chunk := s.Current()
		if chunk.Model != "" {
			replyModel = chunk.Model
		}
		if chunk.JSON.Usage.Valid() && chunk.Usage.TotalTokens+chunk.Usage.PromptTokens+chunk.Usage.CompletionTokens > 0 {
			usage = &Usage{PromptTokens: int(chunk.Usage.PromptTokens), CompletionTokens: int(chunk.Usage.CompletionTokens)}
		}
		for _, ch := range chunk.Choices {
			if ch.Index != 0 {
				continue
			}
			if ch.FinishReason != "" {
				finish = ch.FinishReason // some servers send one after every fragment: the last counts
			}
			for _, tc := range ch.Delta.ToolCalls {
				if err := calls.add(tc.Index, tc.JSON.Index.Valid(), tc.ID, tc.Function.Name, tc.Function.Arguments); err != nil {
					return Reply{}, err
				}
			}
			if ch.Delta.Content == "" {
				continue
			}
			content = append(content, ch.Delta.Content...)
			if err := onDelta(Delta{Text: ch.Delta.Content}); err != nil {
				return Reply{}, err
			}
		}
	}
	if err := s.Err(); err != nil {
		return Reply{}, p.classify(ctx, err)
	}
	r := Reply{Content: string(content), Model: replyModel, Asked: model, FinishReason: finishReason(finish)}
	if r.ToolCalls, err = calls.done(); err != nil {
		return Reply{}, err
	}
	if len(r.ToolCalls) > 0 {
		r.FinishReason = FinishToolCalls // some servers never say so
	}
	if usage != nil {
		r.Usage = *usage
	} else {
		// Servers that omit usage (some local ones do) get an estimate.
		r.Usage = estimateUsage(req, r.Content)
	}
	return r, nil
}

// finishReason keeps the reasons clients know and calls the rest stop.
func finishReason(upstream string) string {
	if upstream == FinishLength || upstream == "content_filter" {
		return upstream
	}
	return FinishStop
}

// openAIParams is the Chat Completions request of a call.
func openAIParams(model string, req Request) (openai.ChatCompletionNewParams, error) {
	params := openai.ChatCompletionNewParams{
		Model:         model,
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}
	for _, m := range req.Messages {
		params.Messages = append(params.Messages, openAIMessage(m))
	}
	gp := req.Params
	if gp.MaxTokens > 0 {
		params.MaxCompletionTokens = openai.Int(int64(gp.MaxTokens))
	}
	if gp.Temperature != nil {
		params.Temperature = openai.Float(*gp.Temperature)
	}
	if gp.TopP != nil {
		params.TopP = openai.Float(*gp.TopP)
	}
	if len(gp.Stop) > 0 {
		params.Stop = openai.ChatCompletionNewParamsStopUnion{OfStringArray: gp.Stop}
	}
	if gp.Seed != nil {
		params.Seed = openai.Int(*gp.Seed)
	}
	if gp.PresencePenalty != nil {
		params.PresencePenalty = openai.Float(*gp.PresencePenalty)
	}
	if gp.FrequencyPenalty != nil {
		params.FrequencyPenalty = openai.Float(*gp.FrequencyPenalty)
	}
	if len(gp.LogitBias) > 0 {
		params.LogitBias = map[string]int64{}
		for k, v := range gp.LogitBias {
			params.LogitBias[k] = int64(v)
		}
	}
	if gp.ReasoningEffort != "" {
		params.ReasoningEffort = shared.ReasoningEffort(gp.ReasoningEffort)
	}
	if gp.User != "" {
		params.User = openai.String(gp.User)
	}
	if len(gp.Metadata) > 0 {
		params.Metadata = shared.Metadata(gp.Metadata)
	}
	if gp.Store != nil {
		params.Store = openai.Bool(*gp.Store)
	}
	if gp.ParallelToolCalls != nil {
		params.ParallelToolCalls = openai.Bool(*gp.ParallelToolCalls)
	}
	for _, t := range gp.Tools {
		def := shared.FunctionDefinitionParam{Name: t.Function.Name}
		if t.Function.Description != "" {
			def.Description = openai.String(t.Function.Description)
		}
		if t.Function.Strict != nil {
			def.Strict = openai.Bool(*t.Function.Strict)
		}
		if len(t.Function.Parameters) > 0 {
			if err := json.Unmarshal(t.Function.Parameters, &def.Parameters); err != nil {
				return params, fmt.Errorf("tools: the parameters of %q are not a JSON object", t.Function.Name)
			}
		}
		params.Tools = append(params.Tools, openai.ChatCompletionFunctionTool(def))
	}
	if tc := gp.ToolChoice; tc != nil {
		if tc.Mode == "function" {
			params.ToolChoice = openai.ToolChoiceOptionFunctionToolChoice(openai.ChatCompletionNamedToolChoiceFunctionParam{Name: tc.Name})
		} else {
			params.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String(tc.Mode)}
		}
	}
	if rf := gp.ResponseFormat; rf != nil {
		switch rf.Type {
		case "json_object":
			params.ResponseFormat.OfJSONObject = &shared.ResponseFormatJSONObjectParam{}
		case "json_schema":
			js := shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: rf.JSONSchema.Name}
			if len(rf.JSONSchema.Schema) > 0 {
				js.Schema = rf.JSONSchema.Schema // as the client sent it, byte for byte
			}
			if rf.JSONSchema.Strict != nil {
				js.Strict = openai.Bool(*rf.JSONSchema.Strict)
			}
			if rf.JSONSchema.Description != "" {
				js.Description = openai.String(rf.JSONSchema.Description)
			}
			params.ResponseFormat.OfJSONSchema = &shared.ResponseFormatJSONSchemaParam{JSONSchema: js}
		case "text":
			params.ResponseFormat.OfText = &shared.ResponseFormatTextParam{}
		}
	}
	return params, nil
}

func openAIMessage(m Message) openai.ChatCompletionMessageParamUnion {
	switch m.Role {
	case "system":
		return openai.SystemMessage(m.Content)
	case "assistant":
		var a openai.ChatCompletionAssistantMessageParam
		if m.Content != "" || len(m.ToolCalls) == 0 {
			a.Content.OfString = openai.String(m.Content)
		}
		for _, tc := range m.ToolCalls {
			a.ToolCalls = append(a.ToolCalls, openai.ChatCompletionMessageToolCallUnionParam{OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{
				ID: tc.ID, Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: tc.Function.Name, Arguments: tc.Function.Arguments}}})
		}
		return openai.ChatCompletionMessageParamUnion{OfAssistant: &a}
	case "tool":
		return openai.ToolMessage(m.Content, m.ToolCallID)
	}
	if len(m.Parts) == 0 {
		return openai.UserMessage(m.Content)
	}
	parts := make([]openai.ChatCompletionContentPartUnionParam, 0, len(m.Parts))
	for _, part := range m.Parts {
		if part.Type == "image_url" {
			parts = append(parts, openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: part.ImageURL, Detail: part.Detail}))
		} else {
			parts = append(parts, openai.TextContentPart(part.Text))
		}
	}
	return openai.UserMessage(parts)
}

func (p *OpenAI) classify(ctx context.Context, err error) error {
	var ae *openai.Error
	if errors.As(err, &ae) {
		return httpError(p.name, ae.StatusCode, ae.Response, ae.Message, ae.RawJSON())
	}
	return transportError(ctx, p.name, err)
}

// estimateUsage counts words where a provider reports no usage.
func estimateUsage(req Request, content string) Usage {
	prompt := 0
	for _, m := range req.Messages {
		prompt += CountWords(m.Content)
	}
	return Usage{PromptTokens: prompt, CompletionTokens: CountWords(content)}
}
