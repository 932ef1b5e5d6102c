// Package llm holds the provider interface the pipeline calls and its providers.
package llm

import (
	"context"
	"strings"
)

// Message is one chat message of a prompt.
type Message struct {
	Role    string // system, user or assistant
	Content string
}

// Request is one provider call.
type Request struct {
	Model    string
	Messages []Message
	Params   Params
	Priority string // the job's priority: high priorities get a provider's capacity first
}

// PriorityHigh is the priority whose calls go first when a provider is at capacity.
const PriorityHigh = "high"

// Params are optional generation settings; zero values mean the provider's default.
type Params struct {
	MaxTokens   int
	Temperature *float64
	TopP        *float64
	Stop        []string
}

// Usage counts the tokens of one call.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// Reply is what a finished call produced.
type Reply struct {
	Content string
	Model   string
	Usage   Usage
}

// Provider streams one completion, calling onDelta for each piece of text in
// order. An error from onDelta aborts the call and is returned.
type Provider interface {
	Name() string
	Stream(ctx context.Context, req Request, onDelta func(delta string) error) (Reply, error)
}

// CountWords is the token estimate used where a provider reports no usage.
func CountWords(s string) int { return len(strings.Fields(s)) }
