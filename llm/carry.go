package llm

// Carrier is a provider that can say which part of a request it cannot
// carry, so that a chain sends a request only to providers that take it
// whole and nothing is silently dropped.
type Carrier interface {
	// Unsupported names the first field of req (as Chat Completions names
	// it) that the provider has no equivalent for, or "".
	Unsupported(req Request) string
}

// Unsupported names the first field of req that a provider of kind
// (openai, anthropic, sim) cannot carry, or "". The API asks it before a job
// is queued; the chain asks each provider before calling it.
func Unsupported(kind string, req Request) string {
	if kind != "anthropic" {
		return "" // OpenAI-compatible servers take the whole contract; sim ignores what it cannot act on
	}
	gp := req.Params
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
