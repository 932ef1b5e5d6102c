package e2e

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/responses"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// carried is a request field the fleet takes: a sample value, and what the
// upstream must then have received (check), or nil for a field answered by
// the fleet itself (it must be accepted).
type carried struct {
	sample any
	check  func(body map[string]any) bool
}

func upstreamHas(key string, want any) func(map[string]any) bool {
	return func(body map[string]any) bool {
		return reflect.DeepEqual(normalize(body[key]), normalize(want))
	}
}

func normalize(v any) any {
	var out any
	b, _ := json.Marshal(v)
	_ = json.Unmarshal(b, &out)
	return out
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// sdkFields are the JSON names of a request type's fields, as the official
// SDK sends them.
func sdkFields(v any) []string {
	var out []string
	typ := reflect.TypeOf(v)
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

var testTool = map[string]any{"type": "function", "function": map[string]any{"name": "lookup", "parameters": map[string]any{"type": "object"}}}

// Every field of the official Go SDK's Chat Completions and Responses
// requests is either carried (the upstream receives it, or the fleet
// answers it itself) or refused with a 400 naming it: none is dropped.
func TestEveryRequestFieldIsCarriedOrRefused(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, nil))
	base := apis[0].URL()
	user := []any{map[string]any{"role": "user", "content": "hi"}}

	chat := map[string]carried{
		"model":                 {"fake-model", upstreamHas("model", "fake-model")},
		"messages":              {user, upstreamHas("messages", user)},
		"frequency_penalty":     {0.5, upstreamHas("frequency_penalty", 0.5)},
		"presence_penalty":      {0.25, upstreamHas("presence_penalty", 0.25)},
		"max_completion_tokens": {50, upstreamHas("max_completion_tokens", 50)},
		"max_tokens":            {40, upstreamHas("max_completion_tokens", 40)}, // OpenAI's newer name for it
		"seed":                  {7, upstreamHas("seed", 7)},
		"store":                 {true, upstreamHas("store", true)},
		"temperature":           {0.3, upstreamHas("temperature", 0.3)},
		"top_p":                 {0.9, upstreamHas("top_p", 0.9)},
		"parallel_tool_calls":   {false, upstreamHas("parallel_tool_calls", false)},
		"user":                  {"u-1", upstreamHas("user", "u-1")},
		"logit_bias":            {map[string]any{"50256": -100}, upstreamHas("logit_bias", map[string]any{"50256": -100})},
		"metadata":              {map[string]any{"k": "v"}, upstreamHas("metadata", map[string]any{"k": "v"})},
		"reasoning_effort":      {"low", upstreamHas("reasoning_effort", "low")},
		"stop":                  {[]any{"END"}, upstreamHas("stop", []any{"END"})},
		"response_format":       {map[string]any{"type": "json_object"}, upstreamHas("response_format", map[string]any{"type": "json_object"})},
		"tool_choice":           {"auto", upstreamHas("tool_choice", "auto")},
		"tools":                 {[]any{testTool}, upstreamHas("tools", []any{testTool})},
		// Answered by the fleet: one choice, text, usage in the stream, no logprobs.
		"n":              {1, nil},
		"modalities":     {[]any{"text"}, nil},
		"stream_options": {map[string]any{"include_usage": true}, nil},
		"logprobs":       {false, nil},
	}
	walk(t, "chat completions", base+"/v1/chat/completions", fake, sdkFields(openai.ChatCompletionNewParams{}),
		map[string]any{"model": "fake-model", "messages": user}, chat)

	first := do(t, http.MethodPost, base+"/v1/responses", map[string]any{"model": "fake-model", "input": "first"}, nil)
	if first.Status != http.StatusOK {
		t.Fatalf("a first response: %d %s", first.Status, first.Raw)
	}
	respTool := map[string]any{"type": "function", "name": "lookup", "parameters": map[string]any{"type": "object"}, "strict": false}
	resp := map[string]carried{
		"model": {"fake-model", upstreamHas("model", "fake-model")},
		"input": {"hello", func(b map[string]any) bool { return strings.Contains(jsonString(b["messages"]), "hello") }},
		"instructions": {"be brief", func(b map[string]any) bool {
			m, _ := b["messages"].([]any)
			return len(m) > 0 && reflect.DeepEqual(m[0], map[string]any{"role": "system", "content": "be brief"})
		}},
		"max_output_tokens":   {30, upstreamHas("max_completion_tokens", 30)},
		"temperature":         {0.3, upstreamHas("temperature", 0.3)},
		"top_p":               {0.9, upstreamHas("top_p", 0.9)},
		"user":                {"u-1", upstreamHas("user", "u-1")},
		"parallel_tool_calls": {false, upstreamHas("parallel_tool_calls", false)},
		"tool_choice":         {"auto", upstreamHas("tool_choice", "auto")},
		"tools":               {[]any{respTool}, upstreamHas("tools", []any{map[string]any{"type": "function", "function": map[string]any{"name": "lookup", "parameters": map[string]any{"type": "object"}, "strict": false}}})},
		"text":                {map[string]any{"format": map[string]any{"type": "json_object"}}, upstreamHas("response_format", map[string]any{"type": "json_object"})},
		"reasoning":           {map[string]any{"effort": "low"}, upstreamHas("reasoning_effort", "low")},
		// Kept by the fleet: the response record and its chain.
		"background":           {false, nil},
		"store":                {true, nil},
		"metadata":             {map[string]any{"k": "v"}, nil},
		"previous_response_id": {first.Body["id"], nil},
		"truncation":           {"disabled", nil},
	}
	walk(t, "responses", base+"/v1/responses", fake, sdkFields(responses.ResponseNewParams{}),
		map[string]any{"model": "fake-model", "input": "hi"}, resp)
}

// walk sends, for each field, a valid request with that field set: a
// carried one must succeed and reach the upstream as its check says; any
// other must be a 400 whose param names it.
func walk(t *testing.T, door, url string, fake *llmfake.Fake, fields []string, minimal map[string]any, table map[string]carried) {
	for _, f := range fields {
		t.Run(door+"/"+f, func(t *testing.T) {
			body := map[string]any{}
			for k, v := range minimal {
				body[k] = v
			}
			c, ok := table[f]
			if ok {
				body[f] = c.sample
			} else {
				body[f] = map[string]any{"x": 1} // any value: the field cannot be carried
			}
			calls := fake.Calls()
			r := do(t, http.MethodPost, url, body, nil)
			if !ok {
				e, _ := r.Body["error"].(map[string]any)
				if r.Status != http.StatusBadRequest || e["param"] != f {
					t.Fatalf("%s: want a 400 naming it, got %d %s", f, r.Status, r.Raw)
				}
				if fake.Calls() != calls {
					t.Fatalf("%s: refused, yet the upstream was called", f)
				}
				return
			}
			if r.Status != http.StatusOK {
				t.Fatalf("%s: %d %s", f, r.Status, r.Raw)
			}
			if c.check != nil && !c.check(fake.LastBody()) {
				t.Fatalf("%s: the upstream got %s", f, jsonString(fake.LastBody()))
			}
		})
	}
}
