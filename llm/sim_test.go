package llm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSimStreamsWordsThatConcatenateToTheReply(t *testing.T) {
	s := NewSim(SimConfig{Tokens: 5})
	var deltas []string
	req := Request{Messages: []Message{{Role: "user", Content: "first"}, {Role: "assistant", Content: "echo: first"}, {Role: "user", Content: "hello  big\nworld"}}}
	r, err := s.Stream(context.Background(), req, func(d Delta) error { deltas = append(deltas, d.Text); return nil })
	if err != nil {
		t.Fatal(err)
	}
	want := "echo: hello  big\nworld lorem ipsum dolor sit amet"
	if r.Content != want || strings.Join(deltas, "") != want {
		t.Fatalf("content %q, deltas %q", r.Content, deltas)
	}
	if len(deltas) != 9 { // echo: hello big world + 5 filler
		t.Fatalf("%d deltas, want one per word: %q", len(deltas), deltas)
	}
	if r.Usage.CompletionTokens != 9 || r.Usage.PromptTokens != 1+2+3 || r.Model != "sim" {
		t.Fatalf("usage %+v model %q", r.Usage, r.Model)
	}
}

func TestSimFailsAndHonoursCancel(t *testing.T) {
	_, err := NewSim(SimConfig{FailRate: 1}).Stream(context.Background(), Request{Messages: []Message{{Role: "user", Content: "x"}}}, func(Delta) error { return nil })
	var pe *Error
	if !errors.As(err, &pe) || !pe.Retryable {
		t.Fatalf("err = %v, want a retryable provider error", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = NewSim(SimConfig{Latency: time.Minute}).Stream(ctx, Request{}, func(Delta) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's", err)
	}

	stop := errors.New("stop")
	_, err = NewSim(SimConfig{Tokens: 3}).Stream(context.Background(), Request{}, func(Delta) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("err = %v, want the callback's", err)
	}
}

func TestSplitWords(t *testing.T) {
	for _, s := range []string{"", "a", " a", "a ", "a  b\tc\n", "  "} {
		if got := strings.Join(splitWords(s), ""); got != s {
			t.Errorf("splitWords(%q) joins to %q", s, got)
		}
	}
}
