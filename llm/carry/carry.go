// Package carry says which parts of a chat request each kind of provider
// can carry. It imports no provider SDK, so that the API asks it too.
package carry

import "github.com/chatfleet/chatfleet/tasks"

// Unsupported names the first field of a request's generation parameters
// (as Chat Completions names it) that a provider of kind (openai,
// anthropic, sim) cannot carry, or "". The API asks it before a job is
// queued; the chain asks each provider before calling it.
func Unsupported(kind string, gp tasks.GenParams) string {
	if kind != "anthropic" {
		return "" // OpenAI-compatible servers take the whole contract; sim ignores what it cannot act on
	}
	switch {
	case gp.Seed != nil:
		return "seed"
	case gp.PresencePenalty != nil:
		return "presence_penalty"
	case gp.FrequencyPenalty != nil:
		return "frequency_penalty"
	case len(gp.LogitBias) > 0:
		return "logit_bias"
	case len(gp.Metadata) > 0:
		return "metadata"
	case gp.Store != nil && *gp.Store:
		return "store"
	case gp.ResponseFormat != nil && gp.ResponseFormat.Type == "json_object":
		return "response_format" // Anthropic's structured output needs a schema
	case gp.ReasoningEffort == "minimal" || gp.ReasoningEffort == "none":
		return "reasoning_effort"
	}
	return ""
}
