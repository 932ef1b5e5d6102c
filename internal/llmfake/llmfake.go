// Package llmfake runs fake LLM servers that speak the real HTTP streaming
// wire formats (OpenAI Chat Completions, Anthropic Messages), scripted per
// call: replies, errors with status and Retry-After, slow first bytes, streams
// cut mid-reply, malformed chunks, missing usage; and a quota mode that
// answers 429 beyond a rate and a number of calls in flight. Like the real
// upstreams they serve one method and path and refuse a call without the
// expected key, so a provider that loses its key or its way fails here as it
// would in production. Tests point real providers and real worker processes
// at them over loopback.
package llmfake

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Step is what the server does on one call.
type Step struct {
	Status         int           // answer this error status instead of a stream
	Message        string        // the error's message
	RetryAfter     string        // Retry-After header of an error answer
	FirstByteDelay time.Duration // wait before answering
	CutAfter       int           // > 0: drop the connection after this many text chunks
	Malformed      bool          // send a chunk that is not JSON after the first text chunk
	OmitUsage      bool          // send no usage
	TokenDelay     time.Duration // between text chunks and tool-call fragments
	// Quirk streams tool calls as some OpenAI-compatible servers do (the
	// Quirk… constants); empty: as OpenAI does.
	Quirk string
	// CutInArgs > 0: drop the connection after this many argument fragments
	// of the reply's tool calls.
	CutInArgs int
	// AnswerAs names the model in the answer instead of the one asked for,
	// as providers name a dated snapshot ("gpt-4o-2024-08-06").
	AnswerAs string
}

// How OpenAI-compatible servers are known to differ from OpenAI when they
// stream tool calls.
const (
	QuirkIndexZero   = "index_zero"   // every parallel call has index 0, each sent whole (Ollama)
	QuirkNoIndex     = "no_index"     // fragments carry no index (older servers)
	QuirkFinishEvery = "finish_every" // a finish_reason chunk after every fragment (some gateways)
	QuirkNoFinish    = "no_finish"    // finish_reason "stop" after tool calls, never "tool_calls"
)

// Fake is a running fake server.
type Fake struct {
	srv    *httptest.Server
	calls  atomic.Int64
	mu     sync.Mutex
	plan   func(call int) Step
	kind   string
	quota  *quota
	seen   [][]Message
	bodies []map[string]any
	traces []string // each call's traceparent header ("" when none)
	usage  []Usage  // what each call that ran to its end reported
	// key is the API key calls must carry; "" takes any call, as a local
	// server started without a key does.
	key  string
	keys []string // the key each call carried ("" when none)
	// refusals describe the calls refused for their method, path, key or
	// headers; refusalsExpected keeps Cleanup from reporting them.
	refusals         []string
	refusalsExpected bool
	// aborted counts calls whose client went away mid-reply.
	aborted atomic.Int64
	// inflight counts the calls being answered now.
	inflight atomic.Int64
}

// Aborted is how many calls the caller broke off while the fake was answering.
func (f *Fake) Aborted() int { return int(f.aborted.Load()) }

// Message is one message of a request the fake received: its text, and
// for Chat Completions its tool call id (a tool message) or how many tool
// calls it holds (an assistant's).
type Message struct {
	Role, Content string
	ToolCallID    string
	ToolCalls     int
}

// Bodies returns every request body received, decoded, in order: what the
// upstream saw of tools, schemas, images and parameters.
func (f *Fake) Bodies() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.bodies...)
}

// LastBody is the newest request body received (nil before any).
func (f *Fake) LastBody() map[string]any {
	b := f.Bodies()
	if len(b) == 0 {
		return nil
	}
	return b[len(b)-1]
}

// Traceparents returns each call's W3C traceparent header, in order ("" for
// a call without one).
func (f *Fake) Traceparents() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.traces...)
}

// Usage is what one call reported: the tokens the upstream bills, for the
// model asked for and the request's last message.
type Usage struct {
	Model, Message                 string
	PromptTokens, CompletionTokens int
}

// Billed returns the usage of every call that reported it, in the order it
// went out: the upstream's own count, to check a ledger against. A call cut
// off before its end reported nothing.
func (f *Fake) Billed() []Usage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Usage(nil), f.usage...)
}

// Requests returns the messages of every request received, in order.
func (f *Fake) Requests() [][]Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]Message(nil), f.seen...)
}

// Reply is the text the fakes answer a prompt whose last user message is msg.
func Reply(msg string) string { return "upstream says: " + msg }

// NewOpenAI starts a fake OpenAI-compatible server; its base URL ends in /v1.
func NewOpenAI(t testing.TB) *Fake { return start(t, "openai") }

// NewAnthropic starts a fake Anthropic Messages server.
func NewAnthropic(t testing.TB) *Fake { return start(t, "anthropic") }

func start(t testing.TB, kind string) *Fake {
	f := &Fake{kind: kind, key: Key, plan: func(int) Step { return Step{} }}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.srv.Close()
		// A refused call may hide behind a fallback or a degraded reply: a
		// test that did not mean to send one is told why it was refused.
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.refusals) > 0 && !f.refusalsExpected {
			var why []string // the distinct reasons, a few of them
			for _, r := range f.refusals {
				if len(why) < 3 && !slices.Contains(why, r) {
					why = append(why, r)
				}
			}
			t.Errorf("llmfake %s at %s refused %d calls: %s", f.kind, f.srv.URL, len(f.refusals), strings.Join(why, "; "))
		}
	})
	return f
}

// URL is the base URL to configure a provider with.
func (f *Fake) URL() string {
	if f.kind == "openai" {
		return f.srv.URL + "/v1"
	}
	return f.srv.URL
}

// Calls is how many requests reached the server, refused ones included.
func (f *Fake) Calls() int { return int(f.calls.Load()) }

// InFlight is how many calls the server is answering now, from the request's
// arrival to the end of its answer.
func (f *Fake) InFlight() int { return int(f.inflight.Load()) }

// SetPlan decides each call's behaviour by its number (1-based; a refused
// call takes a number but is not planned).
func (f *Fake) SetPlan(plan func(call int) Step) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plan = plan
}

// Always answers every call with step.
func (f *Fake) Always(step Step) { f.SetPlan(func(int) Step { return step }) }

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	n := int(f.calls.Add(1))
	f.mu.Lock()
	f.traces = append(f.traces, r.Header.Get("traceparent"))
	f.keys = append(f.keys, f.sentKey(r.Header))
	f.mu.Unlock()
	// Upstreams route and authenticate before they count a call against
	// the quota or look at its body.
	if f.refuse(w, r) {
		return
	}
	f.mu.Lock()
	step, q := f.plan(n), f.quota
	f.mu.Unlock()
	if q != nil {
		if !q.admit() {
			f.fail(w, http.StatusTooManyRequests, "Rate limit reached for requests", "1")
			return
		}
		defer q.done()
	}

	raw, err := io.ReadAll(r.Body)
	var body map[string]any
	var req struct {
		Model    string `json:"model"`
		Messages []struct {
			Role       string `json:"role"`
			Content    any    `json:"content"`
			ToolCallID string `json:"tool_call_id"`
			ToolCalls  []any  `json:"tool_calls"`
		} `json:"messages"`
		Stream bool `json:"stream"`
		Tools  []struct {
			Name     string `json:"name"` // Anthropic
			Function struct {
				Name string `json:"name"`
			} `json:"function"` // OpenAI
		} `json:"tools"`
	}
	if err != nil || json.Unmarshal(raw, &req) != nil || json.Unmarshal(raw, &body) != nil || len(req.Messages) == 0 {
		f.fail(w, http.StatusBadRequest, "malformed request", "")
		return
	}
	var msgs []Message
	for _, m := range req.Messages {
		msgs = append(msgs, Message{Role: m.Role, Content: contentText(m.Content), ToolCallID: m.ToolCallID, ToolCalls: len(m.ToolCalls)})
	}
	f.mu.Lock()
	f.seen = append(f.seen, msgs)
	f.bodies = append(f.bodies, body)
	f.mu.Unlock()
	if step.FirstByteDelay > 0 {
		select {
		case <-time.After(step.FirstByteDelay):
		case <-r.Context().Done():
			return
		}
	}
	if step.Status != 0 {
		f.fail(w, step.Status, step.Message, step.RetryAfter)
		return
	}
	last := req.Messages[len(req.Messages)-1]
	lastText := contentText(last.Content)
	text := Reply(lastText)
	words := splitKeep(text)
	promptWords := 0
	for _, m := range req.Messages {
		promptWords += len(strings.Fields(contentText(m.Content)))
	}
	model := cmp.Or(step.AnswerAs, req.Model, "fake-model")
	// A user message that names tools gets a call of each (parallel when
	// several); anything else, tool results included, gets text.
	var calls []toolCall
	if !toolResultsLast(last.Role, last.Content) {
		for _, t := range req.Tools {
			name := t.Function.Name + t.Name
			if name != "" && strings.Contains(lastText, name) {
				args, _ := json.Marshal(map[string]string{"query": lastText})
				calls = append(calls, toolCall{id: fmt.Sprintf("call_%d_%d", n, len(calls)), name: name, args: string(args)})
			}
		}
	}
	// A call is billed when its usage goes out, before the client can act on it.
	bill := func(prompt, completion int) {
		f.mu.Lock()
		f.usage = append(f.usage, Usage{Model: req.Model, Message: lastText, PromptTokens: prompt, CompletionTokens: completion})
		f.mu.Unlock()
	}
	if f.kind == "openai" && !req.Stream {
		f.answerOpenAI(w, model, text, calls, promptWords, bill)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	if f.kind == "openai" {
		f.streamOpenAI(w, fl, r, step, model, words, calls, promptWords, bill)
	} else {
		f.streamAnthropic(w, fl, r, step, model, words, calls, promptWords, bill)
	}
}

// toolCall is a call the fake makes.
type toolCall struct{ id, name, args string }

// fragments cuts a call's arguments into three pieces, as models stream them.
func (c toolCall) fragments() []string {
	third := len(c.args) / 3
	return []string{c.args[:third], c.args[third : 2*third], c.args[2*third:]}
}

// toolResultsLast reports whether the last message answers tool calls: a
// Chat Completions tool message, or an Anthropic user message of tool_result blocks.
func toolResultsLast(role string, content any) bool {
	if role == "tool" {
		return true
	}
	parts, ok := content.([]any)
	if !ok || len(parts) == 0 {
		return false
	}
	p, _ := parts[0].(map[string]any)
	return p["type"] == "tool_result"
}

// answerOpenAI is the non-streamed Chat Completions answer.
func (f *Fake) answerOpenAI(w http.ResponseWriter, model, text string, calls []toolCall, promptWords int, bill func(prompt, completion int)) {
	msg := map[string]any{"role": "assistant", "content": text}
	finish := "stop"
	if len(calls) > 0 {
		var tcs []any
		for _, c := range calls {
			tcs = append(tcs, map[string]any{"id": c.id, "type": "function", "function": map[string]any{"name": c.name, "arguments": c.args}})
		}
		msg, finish = map[string]any{"role": "assistant", "content": nil, "tool_calls": tcs}, "tool_calls"
	}
	words := len(strings.Fields(text))
	w.Header().Set("Content-Type", "application/json")
	bill(promptWords, words)
	_ = json.NewEncoder(w).Encode(map[string]any{"id": "chatcmpl-fake", "object": "chat.completion", "created": time.Now().Unix(), "model": model,
		"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": finish}},
		"usage":   map[string]any{"prompt_tokens": promptWords, "completion_tokens": words, "total_tokens": promptWords + words}})
}

func (f *Fake) fail(w http.ResponseWriter, status int, msg, retryAfter string) {
	if msg == "" {
		msg = http.StatusText(status)
	}
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if f.kind == "openai" {
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": "invalid_request_error", "param": nil, "code": nil}})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "error", "error": map[string]any{"type": "api_error", "message": msg}})
}

// cut drops the connection without finishing the response.
func cut(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			_ = c.Close()
		}
	}
}

func (f *Fake) streamOpenAI(w http.ResponseWriter, fl http.Flusher, r *http.Request, step Step, model string, words []string, calls []toolCall, promptWords int, bill func(prompt, completion int)) {
	send := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "data: %s\n\n", b)
		fl.Flush()
	}
	chunk := func(delta map[string]any, finish any) map[string]any {
		return map[string]any{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": time.Now().Unix(), "model": model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}}
	}
	send(chunk(map[string]any{"role": "assistant", "content": ""}, nil))
	finish := "stop"
	if len(calls) > 0 {
		if !f.streamOpenAICalls(r, step, calls, send, chunk) {
			cut(w)
			return
		}
		if step.Quirk != QuirkNoFinish {
			finish = "tool_calls"
		}
		words = nil
	} else if !streamWords(w, fl, r, step, words, "data: {\"id\": not json\n\n",
		func(wd string) { send(chunk(map[string]any{"content": wd}, nil)) }) {
		if r.Context().Err() != nil {
			f.aborted.Add(1)
		}
		return
	}
	send(chunk(map[string]any{}, finish))
	if !step.OmitUsage {
		out := len(words) + len(calls)
		bill(promptWords, out)
		send(map[string]any{"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": time.Now().Unix(), "model": model,
			"choices": []any{}, "usage": map[string]any{"prompt_tokens": promptWords, "completion_tokens": out, "total_tokens": promptWords + out}})
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

// streamOpenAICalls streams tool calls as OpenAI does, or with the step's
// quirk. It reports false when the step cuts the stream mid-arguments.
func (f *Fake) streamOpenAICalls(r *http.Request, step Step, calls []toolCall, send func(any), chunk func(map[string]any, any) map[string]any) bool {
	sent := 0
	fragment := func(tc map[string]any) bool {
		if step.CutInArgs > 0 && sent == step.CutInArgs {
			return false
		}
		if sent > 0 && step.TokenDelay > 0 {
			select {
			case <-time.After(step.TokenDelay):
			case <-r.Context().Done():
				return false
			}
		}
		sent++
		send(chunk(map[string]any{"tool_calls": []any{tc}}, nil))
		if step.Quirk == QuirkFinishEvery {
			send(chunk(map[string]any{}, "tool_calls"))
		}
		return true
	}
	for k, c := range calls {
		if step.Quirk == QuirkIndexZero {
			if !fragment(map[string]any{"index": 0, "id": c.id, "type": "function", "function": map[string]any{"name": c.name, "arguments": c.args}}) {
				return false
			}
			continue
		}
		first := map[string]any{"id": c.id, "type": "function", "function": map[string]any{"name": c.name, "arguments": ""}}
		if step.Quirk != QuirkNoIndex {
			first["index"] = k
		}
		if !fragment(first) {
			return false
		}
		for _, a := range c.fragments() {
			next := map[string]any{"function": map[string]any{"arguments": a}}
			if step.Quirk != QuirkNoIndex {
				next["index"] = k
			}
			if !fragment(next) {
				return false
			}
		}
	}
	return true
}

func (f *Fake) streamAnthropic(w http.ResponseWriter, fl http.Flusher, r *http.Request, step Step, model string, words []string, calls []toolCall, promptWords int, bill func(prompt, completion int)) {
	send := func(event string, v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		fl.Flush()
	}
	in := promptWords
	if step.OmitUsage {
		in = 0
	}
	send("message_start", map[string]any{"type": "message_start", "message": map[string]any{
		"id": "msg_fake", "type": "message", "role": "assistant", "content": []any{}, "model": model,
		"stop_reason": nil, "stop_sequence": nil, "usage": map[string]any{"input_tokens": in, "output_tokens": 0}}})
	stop := "end_turn"
	if len(calls) > 0 {
		for k, c := range calls {
			send("content_block_start", map[string]any{"type": "content_block_start", "index": k,
				"content_block": map[string]any{"type": "tool_use", "id": c.id, "name": c.name, "input": map[string]any{}}})
			for _, a := range c.fragments() {
				send("content_block_delta", map[string]any{"type": "content_block_delta", "index": k, "delta": map[string]any{"type": "input_json_delta", "partial_json": a}})
			}
			send("content_block_stop", map[string]any{"type": "content_block_stop", "index": k})
		}
		stop, words = "tool_use", nil
	} else {
		send("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]any{"type": "text", "text": ""}})
		send("ping", map[string]any{"type": "ping"})
		if !streamWords(w, fl, r, step, words, "event: content_block_delta\ndata: {not json\n\n", func(wd string) {
			send("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]any{"type": "text_delta", "text": wd}})
		}) {
			return
		}
		send("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
	}
	out := len(words) + len(calls)
	if step.OmitUsage {
		out = 0
	}
	if !step.OmitUsage {
		bill(in, out)
	}
	send("message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": stop, "stop_sequence": nil}, "usage": map[string]any{"output_tokens": out}})
	send("message_stop", map[string]any{"type": "message_stop"})
}

// streamWords sends the words of a reply as the step says: paced, cut off
// mid-stream, or with a malformed chunk after the first. It reports whether
// the stream may go on to its end.
func streamWords(w http.ResponseWriter, fl http.Flusher, r *http.Request, step Step, words []string, malformed string, sendWord func(string)) bool {
	for i, wd := range words {
		if step.CutAfter > 0 && i == step.CutAfter {
			cut(w)
			return false
		}
		if i > 0 && step.TokenDelay > 0 {
			select {
			case <-time.After(step.TokenDelay):
			case <-r.Context().Done():
				return false
			}
		}
		sendWord(wd)
		if step.Malformed && i == 0 {
			fmt.Fprint(w, malformed)
			fl.Flush()
		}
	}
	return true
}

// contentText flattens string or content-part message content (the text
// of Anthropic tool_result blocks included).
func contentText(c any) string {
	switch v := c.(type) {
	case string:
		return v
	case []any:
		var b strings.Builder
		for _, p := range v {
			if m, ok := p.(map[string]any); ok {
				if s, ok := m["text"].(string); ok {
					b.WriteString(s)
				}
				if m["type"] == "tool_result" {
					b.WriteString(contentText(m["content"]))
				}
			}
		}
		return b.String()
	}
	return ""
}

// splitKeep cuts s into words, each but the first with its leading space.
func splitKeep(s string) []string {
	fields := strings.Fields(s)
	for i := 1; i < len(fields); i++ {
		fields[i] = " " + fields[i]
	}
	return fields
}
