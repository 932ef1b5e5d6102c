package orchestration

import (
	"strings"
	"testing"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

func TestBuildPromptKeepsNewestWithinBudget(t *testing.T) {
	var h []store.Message
	for i := range 10 {
		h = append(h, store.Message{Role: "user", Content: strings.Repeat("u", 40)})
		h = append(h, store.Message{Role: "assistant", Content: strings.Repeat("a", 40) + string(rune('0'+i))})
	}
	p := BuildPrompt(h, nil, "new", 60) // 11 tokens a message: 5 messages of history fit
	if got := p[len(p)-1]; got.Role != "user" || got.Content != "new" {
		t.Fatalf("last message %+v", got)
	}
	if p[0].Role != "user" {
		t.Fatalf("prompt opens with %q", p[0].Role)
	}
	if len(p) != 5 || p[len(p)-2].Content != h[len(h)-1].Content {
		t.Fatalf("prompt %d messages: %+v", len(p), p)
	}
	if got := BuildPrompt(nil, nil, strings.Repeat("x", 1000), 10); len(got) != 1 {
		t.Fatalf("an oversized message alone must still be sent: %d", len(got))
	}
}

// A turn that answers tool calls carries the results after the call that
// asked for them, and the history is never cut between a call and its result.
func TestBuildPromptKeepsToolTurnsWhole(t *testing.T) {
	call := []tasks.ToolCall{{ID: "call_1", Type: "function", Function: tasks.FunctionCall{Name: "f", Arguments: `{}`}}}
	h := []store.Message{
		{Role: "user", Content: strings.Repeat("old ", 40)},
		{Role: "assistant", Content: "done"},
		{Role: "user", Content: "call f"},
		{Role: "assistant", ToolCalls: call},
	}
	results := []tasks.ChatMessage{{Role: "tool", ToolCallID: "call_1", Content: "42"}}
	p := BuildPrompt(h, results, "", 20)
	if len(p) != 3 || p[0].Content != "call f" || p[1].ToolCalls[0].ID != "call_1" || p[2].Role != "tool" || p[2].ToolCallID != "call_1" {
		t.Fatalf("prompt %+v", p)
	}
	// A budget that cuts inside the tool turn drops the whole turn, never half.
	h = append(h, store.Message{Role: "tool", ToolCallID: "call_1", Content: strings.Repeat("r", 200)}, store.Message{Role: "assistant", Content: "it is 42"})
	p = BuildPrompt(h, nil, "next", 40)
	if len(p) != 1 || p[0].Content != "next" {
		t.Fatalf("a cut turn: %+v", p)
	}
}
