package orchestration

import (
	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/tasks"
)

// estimateTokens is a provider-neutral estimate: about four bytes a token.
func estimateTokens(s string) int { return len(s)/4 + 1 }

func messageTokens(m jobs.Message) int {
	n := estimateTokens(m.Content)
	for _, tc := range m.ToolCalls {
		n += estimateTokens(tc.Function.Name + tc.Function.Arguments)
	}
	return n
}

// BuildPrompt turns a session's history, the tool results of this turn and
// the new message into a prompt that fits within budget tokens, dropping the
// oldest history first. The new turn is always kept, even when it alone is
// over the budget: the provider then says no.
func BuildPrompt(history []jobs.Message, toolResults []tasks.ChatMessage, message string, budget int) []llm.Message {
	used := estimateTokens(message)
	for _, tr := range toolResults {
		used += estimateTokens(tr.Content)
	}
	start := len(history)
	for start > 0 {
		cost := messageTokens(history[start-1])
		if used+cost > budget {
			break
		}
		used += cost
		start--
	}
	// Keep turns whole: never open the prompt with a reply or a tool
	// result, whose call would be missing.
	for start < len(history) && history[start].Role != "user" {
		start++
	}
	out := make([]llm.Message, 0, len(history)-start+len(toolResults)+1)
	for _, m := range history[start:] {
		out = append(out, llm.Message{Role: m.Role, Content: m.Content, ToolCalls: m.ToolCalls, ToolCallID: m.ToolCallID})
	}
	out = append(out, toolResults...)
	if message != "" {
		out = append(out, llm.Message{Role: "user", Content: message})
	}
	return out
}
