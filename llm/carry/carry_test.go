package carry

import (
	"testing"

	"github.com/chatfleet/chatfleet/tasks"
)

func TestUnsupported(t *testing.T) {
	seed, yes := int64(1), true
	cases := []struct {
		kind string
		p    tasks.GenParams
		want string
	}{
		{"openai", tasks.GenParams{Seed: &seed, ResponseFormat: &tasks.ResponseFormat{Type: "json_object"}}, ""},
		{"sim", tasks.GenParams{Seed: &seed}, ""},
		{"anthropic", tasks.GenParams{Tools: []tasks.Tool{{Type: "function"}}, ResponseFormat: &tasks.ResponseFormat{Type: "json_schema"}}, ""},
		{"anthropic", tasks.GenParams{Seed: &seed}, "seed"},
		{"anthropic", tasks.GenParams{LogitBias: map[string]int{"1": 1}}, "logit_bias"},
		{"anthropic", tasks.GenParams{Store: &yes}, "store"},
		{"anthropic", tasks.GenParams{ResponseFormat: &tasks.ResponseFormat{Type: "json_object"}}, "response_format"},
		{"anthropic", tasks.GenParams{ReasoningEffort: "minimal"}, "reasoning_effort"},
	}
	for _, c := range cases {
		if got := Unsupported(c.kind, c.p); got != c.want {
			t.Errorf("%s %+v: %q, want %q", c.kind, c.p, got, c.want)
		}
	}
}
