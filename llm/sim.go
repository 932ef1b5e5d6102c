package llm

import (
	"context"
	"math/rand/v2"
	"strings"
	"time"
	"unicode"
)

// SimConfig tunes the simulated provider.
type SimConfig struct {
	Name       string        // provider name (default "sim")
	Latency    time.Duration // before the first token
	TokenDelay time.Duration // between tokens
	Tokens     int           // filler words appended to the reply
	FailRate   float64       // fraction of calls that fail before any token
}

// Sim is the deterministic simulated provider: its reply is "echo: " followed by
// the last user message, then Tokens filler words, one word per delta. Usage
// counts words. It is for development, demos, tests and benchmarks.
type Sim struct{ cfg SimConfig }

// NewSim returns a simulated provider.
func NewSim(cfg SimConfig) *Sim {
	if cfg.Name == "" {
		cfg.Name = "sim"
	}
	return &Sim{cfg: cfg}
}

// Name implements Provider.
func (s *Sim) Name() string { return s.cfg.Name }

var filler = strings.Fields("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua")

// SimReply is the full reply the simulated provider gives to msg with n filler words.
func SimReply(msg string, n int) string {
	var b strings.Builder
	b.WriteString("echo: ")
	b.WriteString(msg)
	for i := 0; i < n; i++ {
		b.WriteByte(' ')
		b.WriteString(filler[i%len(filler)])
	}
	return b.String()
}

// Stream implements Provider.
func (s *Sim) Stream(ctx context.Context, req Request, onDelta func(string) error) (Reply, error) {
	last := ""
	prompt := 0
	for _, m := range req.Messages {
		prompt += CountWords(m.Content)
		if m.Role == "user" {
			last = m.Content
		}
	}
	if err := sleep(ctx, s.cfg.Latency); err != nil {
		return Reply{}, err
	}
	if s.cfg.FailRate > 0 && rand.Float64() < s.cfg.FailRate {
		return Reply{}, &Error{Provider: s.cfg.Name, Retryable: true, Msg: "simulated provider failure"}
	}
	words := splitWords(SimReply(last, s.cfg.Tokens))
	if req.Params.MaxTokens > 0 && len(words) > req.Params.MaxTokens {
		words = words[:req.Params.MaxTokens] // one word is one token here
	}
	content := strings.Join(words, "")
	for i, d := range words {
		if i > 0 {
			if err := sleep(ctx, s.cfg.TokenDelay); err != nil {
				return Reply{}, err
			}
		}
		if err := onDelta(d); err != nil {
			return Reply{}, err
		}
	}
	model := req.Model
	if model == "" {
		model = "sim"
	}
	return Reply{Content: content, Model: model, Usage: Usage{PromptTokens: prompt, CompletionTokens: CountWords(content)}}, nil
}

// splitWords cuts s into deltas of one word each with the whitespace before it,
// so that the deltas concatenate to exactly s.
func splitWords(s string) []string {
	var out []string
	start := 0
	inWord := false
	for i, r := range s {
		space := unicode.IsSpace(r)
		if space && inWord {
			out = append(out, s[start:i])
			start = i
		}
		inWord = !space
	}
	if start < len(s) {
		if len(out) > 0 && strings.TrimSpace(s[start:]) == "" {
			out[len(out)-1] += s[start:] // trailing whitespace joins the last word
		} else {
			out = append(out, s[start:])
		}
	}
	return out
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
