package orchestration

import (
	"strings"
	"testing"

	"github.com/chatfleet/chatfleet/store"
)

func TestBuildPromptKeepsNewestWithinBudget(t *testing.T) {
	var h []store.Message
	for i := range 10 {
		h = append(h, store.Message{Role: "user", Content: strings.Repeat("u", 40)})
		h = append(h, store.Message{Role: "assistant", Content: strings.Repeat("a", 40) + string(rune('0'+i))})
	}
	p := BuildPrompt(h, "new", 60) // 11 tokens a message: 5 messages of history fit
	if got := p[len(p)-1]; got.Role != "user" || got.Content != "new" {
		t.Fatalf("last message %+v", got)
	}
	if p[0].Role != "user" {
		t.Fatalf("prompt opens with %q", p[0].Role)
	}
	if len(p) != 5 || p[len(p)-2].Content != h[len(h)-1].Content {
		t.Fatalf("prompt %d messages: %+v", len(p), p)
	}
	if got := BuildPrompt(nil, strings.Repeat("x", 1000), 10); len(got) != 1 {
		t.Fatalf("an oversized message alone must still be sent: %d", len(got))
	}
}
