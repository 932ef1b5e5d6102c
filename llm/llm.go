// Package llm holds the provider interface the pipeline calls and its providers.
package llm

import (
	"context"
	"strings"

	"github.com/chatfleet/chatfleet/tasks"
)

// The chat contract's types are the task payload's: a request travels from
// the front door to the provider without being translated in between.
type (
	// Message is one chat message of a prompt.
	Message = tasks.ChatMessage
	// ContentPart is text or an image of a message.
	ContentPart = tasks.ContentPart
	// ToolCall is a model's call of a function tool.
	ToolCall = tasks.ToolCall
	// Tool is a function the model may call.
	Tool = tasks.Tool
	// FunctionCall is a tool call's function and arguments.
	FunctionCall = tasks.FunctionCall
	// Params are optional generation settings, tools and response format;
	// zero values mean the provider's default.
	Params = tasks.GenParams
)

// Request is one provider call.
type Request struct {
	Model    string
	Messages []Message
	Params   Params
	Priority string // the job's priority: high priorities get a provider's capacity first
}

// PriorityHigh is the priority whose calls go first when a provider is at capacity.
const PriorityHigh = "high"

// Usage counts the tokens of one call.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// Finish reasons, as OpenAI names them.
const (
	FinishStop      = "stop"
	FinishLength    = "length"
	FinishToolCalls = "tool_calls"
)

// Reply is what a finished call produced.
type Reply struct {
	Content      string
	ToolCalls    []ToolCall
	FinishReason string // stop, length or tool_calls
	Model        string // as the provider named it (a dated snapshot's name, say)
	// Asked is the model the call asked for: usage is counted and priced
	// under it.
	Asked string
	Usage Usage
}

// Delta is the next piece of a reply: text, or a fragment of a tool call.
type Delta struct {
	Text string
	Tool *ToolDelta
}

// ToolDelta is a fragment of the Index-th tool call of a reply (0, 1, …):
// ID and Name on its first fragment, then pieces of its JSON arguments.
// Providers repair their upstream's quirks, so the fragments of each call
// add up to the call, whatever the upstream sent.
type ToolDelta struct {
	Index     int
	ID, Name  string
	Arguments string
}

// Provider streams one completion, calling onDelta for each piece in order.
// An error from onDelta aborts the call and is returned.
type Provider interface {
	Name() string
	Stream(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, error)
}

// CountWords is the token estimate used where a provider reports no usage.
func CountWords(s string) int { return len(strings.Fields(s)) }
