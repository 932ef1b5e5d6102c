package llm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/llmfake"
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
		{"openai", NewOpenAI("openai", oa.URL(), "test-key", "fake-model", nil), oa, llmfake.Reply},
		{"anthropic", NewAnthropic("anthropic", an.URL(), "test-key", "fake-claude", nil), an, llmfake.Reply},
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
