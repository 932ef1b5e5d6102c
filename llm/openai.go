package llm

import (
	"context"
	"errors"
	"net/http"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
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

// Stream implements Provider.
func (p *OpenAI) Stream(ctx context.Context, req Request, onDelta func(string) error) (Reply, error) {
	model := req.Model
	if model == "" {
		model = p.model
	}
	msgs := make([]openai.ChatCompletionMessageParamUnion, 0, len(req.Messages))
	for _, m := range req.Messages {
		switch m.Role {
		case "system":
			msgs = append(msgs, openai.SystemMessage(m.Content))
		case "assistant":
			msgs = append(msgs, openai.AssistantMessage(m.Content))
		default:
			msgs = append(msgs, openai.UserMessage(m.Content))
		}
	}
	params := openai.ChatCompletionNewParams{
		Model:         model,
		Messages:      msgs,
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}
	if req.Params.MaxTokens > 0 {
		params.MaxCompletionTokens = openai.Int(int64(req.Params.MaxTokens))
	}
	if req.Params.Temperature != nil {
		params.Temperature = openai.Float(*req.Params.Temperature)
	}
	if req.Params.TopP != nil {
		params.TopP = openai.Float(*req.Params.TopP)
	}
	if len(req.Params.Stop) > 0 {
		params.Stop = openai.ChatCompletionNewParamsStopUnion{OfStringArray: req.Params.Stop}
	}
	s := p.client.Chat.Completions.NewStreaming(ctx, params)
	defer s.Close()

	var content []byte
	var usage *Usage
	replyModel := model
	for s.Next() {
		chunk := s.Current()
		if chunk.Model != "" {
			replyModel = chunk.Model
		}
		if chunk.JSON.Usage.Valid() && chunk.Usage.TotalTokens+chunk.Usage.PromptTokens+chunk.Usage.CompletionTokens > 0 {
			usage = &Usage{PromptTokens: int(chunk.Usage.PromptTokens), CompletionTokens: int(chunk.Usage.CompletionTokens)}
		}
		for _, ch := range chunk.Choices {
			if ch.Index != 0 || ch.Delta.Content == "" {
				continue
			}
			content = append(content, ch.Delta.Content...)
			if err := onDelta(ch.Delta.Content); err != nil {
				return Reply{}, err
			}
		}
	}
	if err := s.Err(); err != nil {
		return Reply{}, p.classify(ctx, err)
	}
	r := Reply{Content: string(content), Model: replyModel}
	if usage != nil {
		r.Usage = *usage
	} else {
		// Servers that omit usage (some local ones do) get an estimate.
		r.Usage = estimateUsage(req, r.Content)
	}
	return r, nil
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
