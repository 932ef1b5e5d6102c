package llm

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/tasks"
)

// providerUnderTest is one provider and, for the HTTP ones, its fake upstream.
type providerUnderTest struct {
	name  string
	p     Provider
	fake  *llmfake.Fake // nil for the simulated provider
	reply func(msg string) string
}

func providers(t *testing.T) []providerUnderTest {
	oa, an := llmfake.NewOpenAI(t), llmfake.NewAnthropic(t)
	return []providerUnderTest{
		{"openai", NewOpenAI("openai", oa.URL(), llmfake.Key, "fake-model", nil), oa, llmfake.Reply},
		{"anthropic", NewAnthropic("anthropic", an.URL(), llmfake.Key, "fake-claude", nil), an, llmfake.Reply},
		{"sim", NewSim(SimConfig{}), nil, func(m string) string { return SimReply(m, 0) }},
	}
}

func collect(ctx context.Context, p Provider, msg string) (Reply, []string, error) {
	var deltas []string
	req := Request{Messages: []Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "earlier"}, {Role: "assistant", Content: "ok"}, {Role: "user", Content: msg}}}
	r, err := p.Stream(ctx, req, func(d Delta) error { deltas = append(deltas, d.Text); return nil })
	return r, deltas, err
}

// Every provider streams deltas that add up to the reply, reports usage and
// stops at once when its caller cancels.
func TestConformance(t *testing.T) {
	for _, tc := range providers(t) {
		t.Run(tc.name, func(t *testing.T) {
			r, deltas, err := collect(context.Background(), tc.p, "tell me more")
			if err != nil {
				t.Fatal(err)
			}
			if r.Content != tc.reply("tell me more") || strings.Join(deltas, "") != r.Content || len(deltas) < 2 {
				t.Fatalf("content %q from deltas %q", r.Content, deltas)
			}
			if r.Usage.PromptTokens <= 0 || r.Usage.CompletionTokens <= 0 || r.Model == "" {
				t.Fatalf("usage %+v model %q", r.Usage, r.Model)
			}

			stop := errors.New("stop")
			_, err = tc.p.Stream(context.Background(), Request{Messages: []Message{{Role: "user", Content: "a b c d"}}}, func(Delta) error { return stop })
			if !errors.Is(err, stop) {
				t.Fatalf("an error from onDelta must abort the call and come back: %v", err)
			}
		})
	}
}

// Each HTTP provider sends its key where its upstream reads it: the fake
// answers the right key and refuses another or none with the upstream's
// own 401, which the provider classifies as final (no retry, not a request
// fault whose message the caller may see).
func TestConformanceKeyReachesTheUpstream(t *testing.T) {
	oa, an := llmfake.NewOpenAI(t), llmfake.NewAnthropic(t)
	const right = "sk-right-0123456789"
	for _, tc := range []struct {
		name string
		fake *llmfake.Fake
		with func(key string) Provider
	}{
		{"openai", oa, func(k string) Provider { return NewOpenAI("openai", oa.URL(), k, "fake-model", nil) }},
		{"anthropic", an, func(k string) Provider { return NewAnthropic("anthropic", an.URL(), k, "fake-claude", nil) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.fake.ExpectKey(right)
			tc.fake.ExpectRefusals()
			if _, _, err := collect(context.Background(), tc.with(right), "hi"); err != nil {
				t.Fatalf("with the right key: %v", err)
			}
			for _, key := range []string{"sk-wrong-0123456789", ""} {
				_, _, err := collect(context.Background(), tc.with(key), "hi")
				var pe *Error
				if !errors.As(err, &pe) || pe.Status != 401 || pe.Retryable || pe.RequestFault != "" {
					t.Fatalf("key %q: %#v, want a final 401", key, err)
				}
			}
			if got := tc.fake.Keys(); !slices.Equal(got, []string{right, "sk-wrong-0123456789", ""}) {
				t.Fatalf("the upstream saw keys %q", got)
			}
			if n := len(tc.fake.Refusals()); n != 2 {
				t.Fatalf("%d refusals, want 2: %q", n, tc.fake.Refusals())
			}
		})
	}
}

// The HTTP providers classify what upstreams do wrong.
func TestConformanceUpstreamFailures(t *testing.T) {
	for _, tc := range providers(t) {
		if tc.fake == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			cases := []struct {
				name      string
				step      llmfake.Step
				retryable bool
				status    int
				partial   bool
			}{
				{"400 is final and keeps the message", llmfake.Step{Status: 400, Message: "messages: too long"}, false, 400, false},
				{"401", llmfake.Step{Status: 401, Message: "bad key"}, false, 401, false},
				{"404 unknown model", llmfake.Step{Status: 404, Message: "no such model"}, false, 404, false},
				{"429 with Retry-After", llmfake.Step{Status: 429, Message: "slow down", RetryAfter: "7"}, true, 429, false},
				{"500", llmfake.Step{Status: 500, Message: "boom"}, true, 500, false},
				{"503", llmfake.Step{Status: 503}, true, 503, false},
				{"cut mid-stream", llmfake.Step{CutAfter: 2}, true, 0, true},
				{"malformed chunk", llmfake.Step{Malformed: true}, true, 0, true},
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					tc.fake.Always(c.step)
					before := tc.fake.Calls()
					_, deltas, err := collect(context.Background(), tc.p, "x y z")
					var pe *Error
					if !errors.As(err, &pe) {
						t.Fatalf("err = %v, want *llm.Error", err)
					}
					if pe.Retryable != c.retryable || pe.Status != c.status {
						t.Fatalf("retryable=%v status=%d, want %v %d (%v)", pe.Retryable, pe.Status, c.retryable, c.status, err)
					}
					if c.step.Message != "" && !strings.Contains(pe.Error(), c.step.Message) {
						t.Fatalf("error %q lost the upstream's message %q", pe.Error(), c.step.Message)
					}
					if c.step.RetryAfter == "7" && pe.RetryAfter != 7*time.Second {
						t.Fatalf("RetryAfter %s", pe.RetryAfter)
					}
					if c.partial != (len(deltas) > 0) {
						t.Fatalf("deltas %q before the failure", deltas)
					}
					if got := tc.fake.Calls() - before; got != 1 {
						t.Fatalf("%d upstream calls, want exactly 1 (no hidden SDK retries)", got)
					}
				})
			}

			t.Run("missing usage is estimated", func(t *testing.T) {
				tc.fake.Always(llmfake.Step{OmitUsage: true})
				r, _, err := collect(context.Background(), tc.p, "count these words")
				if err != nil || r.Usage.CompletionTokens != len(strings.Fields(r.Content)) || r.Usage.PromptTokens == 0 {
					t.Fatalf("usage %+v err %v", r.Usage, err)
				}
			})
			t.Run("slow first byte hits the deadline", func(t *testing.T) {
				tc.fake.Always(llmfake.Step{FirstByteDelay: 2 * time.Second})
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				start := time.Now()
				_, _, err := collect(ctx, tc.p, "slow")
				if !Retryable(err) || time.Since(start) > time.Second {
					t.Fatalf("err %v after %s", err, time.Since(start))
				}
			})
			t.Run("caller cancel is not a provider failure", func(t *testing.T) {
				tc.fake.Always(llmfake.Step{TokenDelay: time.Second})
				ctx, cancel := context.WithCancel(context.Background())
				go func() { time.Sleep(100 * time.Millisecond); cancel() }()
				_, _, err := collect(ctx, tc.p, "a b c d e f")
				var pe *Error
				if !errors.Is(err, context.Canceled) || errors.As(err, &pe) {
					t.Fatalf("err %v, want the caller's cancel", err)
				}
			})
			tc.fake.Always(llmfake.Step{})
		})
	}
}

// Every provider carries a tool loop: tools and a message naming two of them
// come back as two calls whose fragments add up to each call; the results
// sent back get a text answer. The HTTP upstreams received the tools.
func TestConformanceToolLoop(t *testing.T) {
	tools := []Tool{
		{Type: "function", Function: tasks.FunctionDef{Name: "weather", Parameters: json.RawMessage(`{"type":"object","properties":{"query":{"type":"string"}},"required":["query"]}`)}},
		{Type: "function", Function: tasks.FunctionDef{Name: "clock", Parameters: json.RawMessage(`{"type":"object","properties":{"query":{"type":"string"}}}`)}},
	}
	for _, tc := range providers(t) {
		t.Run(tc.name, func(t *testing.T) {
			ask := Message{Role: "user", Content: "use weather and clock"}
			req := Request{Messages: []Message{ask}, Params: Params{Tools: tools}}
			got := map[int]*ToolCall{}
			r, err := tc.p.Stream(context.Background(), req, func(d Delta) error {
				if d.Tool == nil {
					return nil
				}
				c := got[d.Tool.Index]
				if c == nil {
					if d.Tool.ID == "" || d.Tool.Name == "" {
						t.Fatalf("a call's first fragment names it: %+v", d.Tool)
					}
					c = &ToolCall{ID: d.Tool.ID, Function: FunctionCall{Name: d.Tool.Name}}
					got[d.Tool.Index] = c
				}
				c.Function.Arguments += d.Tool.Arguments
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if r.FinishReason != FinishToolCalls || len(r.ToolCalls) != 2 || len(got) != 2 {
				t.Fatalf("reply %+v, fragments %v", r, got)
			}
			for k, c := range r.ToolCalls {
				var args map[string]any
				if c.ID != got[k].ID || c.Function.Name != got[k].Function.Name || c.Function.Arguments != got[k].Function.Arguments ||
					json.Unmarshal([]byte(c.Function.Arguments), &args) != nil {
					t.Fatalf("call %d: %+v, fragments gave %+v", k, c, got[k])
				}
			}
			if r.ToolCalls[0].Function.Name != "weather" || r.ToolCalls[1].Function.Name != "clock" || r.ToolCalls[0].ID == r.ToolCalls[1].ID {
				t.Fatalf("calls %+v", r.ToolCalls)
			}
			if tc.fake != nil && len(tc.fake.LastBody()["tools"].([]any)) != 2 {
				t.Fatalf("the upstream got tools %v", tc.fake.LastBody()["tools"])
			}
			msgs := []Message{ask, {Role: "assistant", ToolCalls: r.ToolCalls},
				{Role: "tool", ToolCallID: r.ToolCalls[0].ID, Content: "sunny"}, {Role: "tool", ToolCallID: r.ToolCalls[1].ID, Content: "noon"}}
			r2, err := tc.p.Stream(context.Background(), Request{Messages: msgs, Params: Params{Tools: tools}}, func(Delta) error { return nil })
			if err != nil {
				t.Fatal(err)
			}
			if r2.FinishReason != FinishStop || len(r2.ToolCalls) != 0 || r2.Content == "" {
				t.Fatalf("after the results: %+v", r2)
			}
			if tc.fake != nil {
				if got := tc.fake.Requests(); len(got[len(got)-1]) < 3 {
					t.Fatalf("the upstream got %+v", got[len(got)-1])
				}
			}
		})
	}
}

// However an OpenAI-compatible upstream numbers its tool-call fragments,
// the provider hands on two calls with their own ids, names and arguments.
func TestOpenAIRepairsToolCallQuirks(t *testing.T) {
	fake := llmfake.NewOpenAI(t)
	p := NewOpenAI("openai", fake.URL(), llmfake.Key, "fake-model", nil)
	tools := []Tool{{Type: "function", Function: tasks.FunctionDef{Name: "alpha"}}, {Type: "function", Function: tasks.FunctionDef{Name: "beta"}}}
	for _, quirk := range []string{"", llmfake.QuirkIndexZero, llmfake.QuirkNoIndex, llmfake.QuirkFinishEvery, llmfake.QuirkNoFinish} {
		t.Run("quirk "+quirk, func(t *testing.T) {
			fake.Always(llmfake.Step{Quirk: quirk})
			var indices []int
			r, err := p.Stream(context.Background(), Request{Messages: []Message{{Role: "user", Content: "alpha then beta"}}, Params: Params{Tools: tools}},
				func(d Delta) error {
					if d.Tool != nil && d.Tool.ID != "" {
						indices = append(indices, d.Tool.Index)
					}
					return nil
				})
			if err != nil {
				t.Fatal(err)
			}
			if r.FinishReason != FinishToolCalls || len(r.ToolCalls) != 2 || !slices.Equal(indices, []int{0, 1}) {
				t.Fatalf("reply %+v, first fragments at %v", r, indices)
			}
			for k, name := range []string{"alpha", "beta"} {
				c := r.ToolCalls[k]
				if c.Function.Name != name || c.Function.Arguments != `{"query":"alpha then beta"}` || c.ID == "" {
					t.Fatalf("call %d: %+v", k, c)
				}
			}
		})
	}
}
