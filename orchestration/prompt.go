package orchestration

import (
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/store"
)

// estimateTokens is a provider-neutral estimate: about four bytes a token.
func estimateTokens(s string) int { return len(s)/4 + 1 }

// BuildPrompt turns a session's history and the new message into a prompt that
// fits within budget tokens, dropping the oldest history first. The new message
// is always kept, even when it alone is over the budget: the provider then says no.
func BuildPrompt(history []store.Message, message string, budget int) []llm.Message {
	used := estimateTokens(message)
	start := len(history)
	for start > 0 {
		cost := estimateTokens(history[start-1].Content)
		if used+cost > budget {
			break
		}
		used += cost
		start--
	}
	// Keep user/assistant pairs whole: never open the prompt with a reply.
	if start < len(history) && history[start].Role == "assistant" {
		start++
	}
	out := make([]llm.Message, 0, len(history)-start+1)
	for _, m := range history[start:] {
		out = append(out, llm.Message{Role: m.Role, Content: m.Content})
	}
	return append(out, llm.Message{Role: "user", Content: message})
}
