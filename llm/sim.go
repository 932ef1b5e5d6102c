package llm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/chatfleet/chatfleet/llm/carry"
)

// SimConfig tunes the simulated provider.
type SimConfig struct {
	Name       string        // provider name (default "sim")
	Latency    time.Duration // before the first token
	TokenDelay time.Duration // between tokens
	Tokens     int           // filler words appended to the reply
	FailRate   float64       // fraction of calls that fail before any token
	Stamps     bool          // each word is the time it was produced (Unix µs)
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

// Unsupported implements Carrier.
func (s *Sim) Unsupported(req Request) string { return carry.Unsupported("sim", req.Params) }

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

// Stream implements Provider. With tools, a last user message that names
// one or more of them gets a call of each (one when parallel_tool_calls is
// false), arguments {"message": <the message>}; after tool results the reply
// echoes them. With a JSON response format the reply is {"echo": <reply>}.
func (s *Sim) Stream(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, error) {
	last := ""
	prompt := 0
	for _, m := range req.Messages {
		prompt += CountWords(m.Content)
		if m.Role == "user" || m.Role == "tool" {
			last = m.Content
		}
	}
	if err := sleep(ctx, s.cfg.Latency); err != nil {
		return Reply{}, err
	}
	if s.cfg.FailRate > 0 && rand.Float64() < s.cfg.FailRate {
		return Reply{}, &Error{Provider: s.cfg.Name, Retryable: true, Msg: "simulated provider failure"}
	}
	model := req.Model
	if model == "" {
		model = "sim"
	}
	if n := len(req.Messages); n > 0 && req.Messages[n-1].Role == "user" {
		if calls := simToolCalls(req, last); len(calls) > 0 {
			for k, c := range calls {
				// Arguments in two fragments, as real providers stream them.
				half := len(c.Function.Arguments) / 2
				for i, d := range []ToolDelta{{Index: k, ID: c.ID, Name: c.Function.Name, Arguments: c.Function.Arguments[:half]},
					{Index: k, Arguments: c.Function.Arguments[half:]}} {
					if i > 0 || k > 0 {
						if err := sleep(ctx, s.cfg.TokenDelay); err != nil {
							return Reply{}, err
						}
					}
					if err := onDelta(Delta{Tool: &d}); err != nil {
						return Reply{}, err
					}
				}
			}
			return Reply{ToolCalls: calls, FinishReason: FinishToolCalls, Model: model, Asked: model,
				Usage: Usage{PromptTokens: prompt, CompletionTokens: len(calls)}}, nil
		}
	}
	reply := SimReply(last, s.cfg.Tokens)
	words := splitWords(reply)
	finish := FinishStop
	if req.Params.MaxTokens > 0 && len(words) > req.Params.MaxTokens {
		words = words[:req.Params.MaxTokens] // one word is one token here
		finish = FinishLength
	}
	if rf := req.Params.ResponseFormat; rf != nil && (rf.Type == "json_object" || rf.Type == "json_schema") {
		b, _ := json.Marshal(map[string]string{"echo": strings.Join(words, "")})
		words = splitWords(string(b))
	}
	// The words come on the model's own clock, as from a provider: a
	// worker late to one of them does not delay the ones after it.
	start := time.Now()
	for i, d := range words {
		if i > 0 {
			if err := sleep(ctx, time.Until(start.Add(time.Duration(i)*s.cfg.TokenDelay))); err != nil {
				return Reply{}, err
			}
		}
		if s.cfg.Stamps {
			d = " " + strconv.FormatInt(time.Now().UnixMicro(), 10)
			words[i] = d
		}
		if err := onDelta(Delta{Text: d}); err != nil {
			return Reply{}, err
		}
	}
	content := strings.Join(words, "")
	return Reply{Content: content, Model: model, Asked: model, FinishReason: finish, Usage: Usage{PromptTokens: prompt, CompletionTokens: CountWords(content)}}, nil
}

// simToolCalls are the calls the simulated model makes for msg: each tool
// the message names, as tool_choice allows.
func simToolCalls(req Request, msg string) []ToolCall {
	gp := req.Params
	if len(gp.Tools) == 0 || (gp.ToolChoice != nil && gp.ToolChoice.Mode == "none") {
		return nil
	}
	var names []string
	for _, t := range gp.Tools {
		forced := gp.ToolChoice != nil && gp.ToolChoice.Mode == "function"
		if (forced && t.Function.Name == gp.ToolChoice.Name) || (!forced && strings.Contains(msg, t.Function.Name)) {
			names = append(names, t.Function.Name)
		}
	}
	if len(names) == 0 && gp.ToolChoice != nil && gp.ToolChoice.Mode == "required" {
		names = []string{gp.Tools[0].Function.Name}
	}
	if len(names) > 1 && gp.ParallelToolCalls != nil && !*gp.ParallelToolCalls {
		names = names[:1]
	}
	args, _ := json.Marshal(map[string]string{"message": msg})
	calls := make([]ToolCall, len(names))
	for k, name := range names {
		// Deterministic, and distinct across the turns of a conversation.
		sum := sha256.Sum256([]byte(fmt.Sprintf("%d\x00%s\x00%d", len(req.Messages), msg, k)))
		calls[k] = ToolCall{ID: "call_" + hex.EncodeToString(sum[:8]), Type: "function",
			Function: FunctionCall{Name: name, Arguments: string(args)}}
	}
	return calls
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
