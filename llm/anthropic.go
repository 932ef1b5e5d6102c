package llm

import (
	"context"
	"errors"
	"net/http"
	"strings"

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

// Stream implements Provider.
func (p *Anthropic) Stream(ctx context.Context, req Request, onDelta func(string) error) (Reply, error) {
	model := req.Model
	if model == "" {
		model = p.model
	}
	params := anthropic.MessageNewParams{Model: model, MaxTokens: anthropicMaxTokens}
	if req.Params.MaxTokens > 0 {
		params.MaxTokens = int64(req.Params.MaxTokens)
	}
	// This SDK's Messages API takes no temperature or top_p: they are dropped.
	params.StopSequences = req.Params.Stop
	for _, m := range req.Messages {
		switch m.Role {
		case "system":
			params.System = append(params.System, anthropic.TextBlockParam{Text: m.Content})
		case "assistant":
			params.Messages = append(params.Messages, anthropic.NewAssistantMessage(anthropic.NewTextBlock(m.Content)))
		default:
			params.Messages = append(params.Messages, anthropic.NewUserMessage(anthropic.NewTextBlock(m.Content)))
		}
	}
	s := p.client.Messages.NewStreaming(ctx, params)
	defer s.Close()

	var content strings.Builder
	var usage Usage
	replyModel := model
	for s.Next() {
		ev := s.Current()
		switch ev.Type {
		case "message_start":
			if ev.Message.Model != "" {
				replyModel = string(ev.Message.Model)
			}
			usage.PromptTokens = int(ev.Message.Usage.InputTokens)
		case "content_block_delta":
			if ev.Delta.Type != "text_delta" || ev.Delta.Text == "" {
				continue
			}
			content.WriteString(ev.Delta.Text)
			if err := onDelta(ev.Delta.Text); err != nil {
				return Reply{}, err
			}
		case "message_delta":
			usage.CompletionTokens = int(ev.Usage.OutputTokens)
			if ev.Usage.InputTokens > 0 {
				usage.PromptTokens = int(ev.Usage.InputTokens)
			}
		}
	}
	if err := s.Err(); err != nil {
		return Reply{}, p.classify(ctx, err)
	}
	r := Reply{Content: content.String(), Model: replyModel, Usage: usage}
	if usage.CompletionTokens == 0 && r.Content != "" {
		r.Usage = estimateUsage(req, r.Content)
	}
	return r, nil
}

func (p *Anthropic) classify(ctx context.Context, err error) error {
	var ae *anthropic.Error
	if errors.As(err, &ae) {
		return httpError(p.name, ae.StatusCode, ae.Response, ae.Message, ae.RawJSON())
	}
	return transportError(ctx, p.name, err)
}
