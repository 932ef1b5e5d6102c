package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/openai/openai-go/v3/shared"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

var weatherParams = map[string]any{"type": "object", "properties": map[string]any{"query": map[string]any{"type": "string"}}, "required": []any{"query"}}

func chatTools() []openai.ChatCompletionToolUnionParam {
	return []openai.ChatCompletionToolUnionParam{
		openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "weather", Description: openai.String("the weather in a city"), Parameters: weatherParams}),
		openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "clock", Parameters: weatherParams}),
	}
}

// upstreamTools are the function names the upstream's last request offered.
func upstreamTools(fake *llmfake.Fake) []string {
	var names []string
	tools, _ := fake.LastBody()["tools"].([]any)
	for _, t := range tools {
		m, _ := t.(map[string]any)
		if f, ok := m["function"].(map[string]any); ok {
			names = append(names, f["name"].(string))
		} else {
			names = append(names, m["name"].(string)) // Anthropic
		}
	}
	return names
}

func sameJSON(t *testing.T, a, b any) bool {
	t.Helper()
	norm := func(v any) any {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var out any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

// An agent loop with the official openai-go client through 2 API and 2
// worker processes against an OpenAI-compatible upstream that answers tool
// calls: user → tool call → tool result → final text, on Chat Completions
// (plain and streamed, one call and two in parallel), on Responses (in the
// background with a poll, and streamed with a resume in the middle of a
// call's arguments) and on the jobs API (a session of three turns). The
// upstream receives the tools, the calls and their results every time, a
// json_schema unchanged and images as content parts.
func TestAgentLoopThroughTheFleet(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 2, 2, providerEnv(fake, map[string]string{"CHATFLEET_API_KEYS": keysEnv()}))
	a, b := responsesClient(apis[0].URL(), keyAcme), responsesClient(apis[1].URL(), keyAcme)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	t.Run("chat completions", func(t *testing.T) {
		msgs := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("what does weather say for Paris?")}
		first, err := a.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "fake-model", Messages: msgs, Tools: chatTools()})
		if err != nil {
			t.Fatal(err)
		}
		ch := first.Choices[0]
		if ch.FinishReason != "tool_calls" || len(ch.Message.ToolCalls) != 1 || ch.Message.ToolCalls[0].Function.Name != "weather" {
			t.Fatalf("first turn: %+v", ch)
		}
		call := ch.Message.ToolCalls[0]
		if !json.Valid([]byte(call.Function.Arguments)) || call.ID == "" {
			t.Fatalf("call %+v", call)
		}
		if got := upstreamTools(fake); !sameJSON(t, got, []string{"weather", "clock"}) {
			t.Fatalf("the upstream got tools %v", got)
		}
		msgs = append(msgs, ch.Message.ToParam(), openai.ToolMessage("18°C and sunny", call.ID))
		final, err := b.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "fake-model", Messages: msgs, Tools: chatTools()})
		if err != nil {
			t.Fatal(err)
		}
		if c := final.Choices[0]; c.FinishReason != "stop" || c.Message.Content != llmfake.Reply("18°C and sunny") || len(c.Message.ToolCalls) != 0 {
			t.Fatalf("final turn: %+v", c)
		}
		got := lastRequest(fake)
		if len(got) != 3 || got[1].Role != "assistant" || got[1].ToolCalls != 1 || got[2].Role != "tool" || got[2].ToolCallID != call.ID {
			t.Fatalf("the upstream got %+v", got)
		}
	})

	t.Run("chat completions streamed, two calls in parallel", func(t *testing.T) {
		msgs := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("ask weather and clock")}
		acc := streamChat(ctx, t, a, openai.ChatCompletionNewParams{Model: "fake-model", Messages: msgs, Tools: chatTools()})
		calls := acc.Choices[0].Message.ToolCalls
		if acc.Choices[0].FinishReason != "tool_calls" || len(calls) != 2 || calls[0].Function.Name != "weather" || calls[1].Function.Name != "clock" ||
			calls[0].ID == calls[1].ID || !json.Valid([]byte(calls[0].Function.Arguments)) || !json.Valid([]byte(calls[1].Function.Arguments)) {
			t.Fatalf("streamed calls %+v", acc.Choices[0])
		}
		msgs = append(msgs, acc.Choices[0].Message.ToParam(), openai.ToolMessage("rain", calls[0].ID), openai.ToolMessage("noon", calls[1].ID))
		acc = streamChat(ctx, t, b, openai.ChatCompletionNewParams{Model: "fake-model", Messages: msgs, Tools: chatTools()})
		if acc.Choices[0].Message.Content != llmfake.Reply("noon") || acc.Choices[0].FinishReason != "stop" {
			t.Fatalf("final streamed turn %+v", acc.Choices[0])
		}
		if got := lastRequest(fake); len(got) != 4 || got[1].ToolCalls != 2 || got[3].ToolCallID != calls[1].ID {
			t.Fatalf("the upstream got %+v", got)
		}
	})

	t.Run("json_schema reaches the upstream unchanged; images as content parts", func(t *testing.T) {
		schema := map[string]any{"type": "object", "properties": map[string]any{"answer": map[string]any{"type": "string"}},
			"required": []any{"answer"}, "additionalProperties": false}
		rf := openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
			JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: "answer", Schema: schema, Strict: openai.Bool(true)}}}
		const dataURL = "data:image/png;base64,iVBORw0KGgo="
		msg := openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
			openai.TextContentPart("what is in these?"),
			openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: "https://example.com/cat.png", Detail: "low"}),
			openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: dataURL}),
		})
		if _, err := a.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "fake-model", Messages: []openai.ChatCompletionMessageParamUnion{msg},
			ResponseFormat: rf, Seed: openai.Int(7)}); err != nil {
			t.Fatal(err)
		}
		body := fake.LastBody()
		want := map[string]any{"type": "json_schema", "json_schema": map[string]any{"name": "answer", "schema": schema, "strict": true}}
		if !sameJSON(t, body["response_format"], want) || body["seed"] != float64(7) {
			t.Fatalf("the upstream got response_format %v seed %v", body["response_format"], body["seed"])
		}
		parts := body["messages"].([]any)[0].(map[string]any)["content"].([]any)
		wantParts := []any{map[string]any{"type": "text", "text": "what is in these?"},
			map[string]any{"type": "image_url", "image_url": map[string]any{"url": "https://example.com/cat.png", "detail": "low"}},
			map[string]any{"type": "image_url", "image_url": map[string]any{"url": dataURL}}}
		if !sameJSON(t, parts, wantParts) {
			t.Fatalf("the upstream got content %v", parts)
		}
	})

	t.Run("responses in the background, polled", func(t *testing.T) {
		tools := []responses.ToolUnionParam{{OfFunction: &responses.FunctionToolParam{Name: "weather", Parameters: weatherParams, Strict: openai.Bool(false)}}}
		r, err := a.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("use weather for Oslo"), Tools: tools, Background: openai.Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		r = pollResponse(ctx, t, b, r)
		if len(r.Output) != 1 || r.Output[0].Type != "function_call" {
			t.Fatalf("output %+v", r.Output)
		}
		call := r.Output[0].AsFunctionCall()
		if call.Name != "weather" || call.CallID == "" || !json.Valid([]byte(call.Arguments)) {
			t.Fatalf("call %+v", call)
		}
		out := responses.ResponseInputItemParamOfFunctionCallOutput("-3°C")
		out.OfFunctionCallOutput.CallID = openai.String(call.CallID)
		r2, err := b.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", PreviousResponseID: openai.String(r.ID), Tools: tools,
			Input: responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{out}}, Background: openai.Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		r2 = pollResponse(ctx, t, a, r2)
		if r2.OutputText() != llmfake.Reply("-3°C") {
			t.Fatalf("final %q", r2.OutputText())
		}
		got := lastRequest(fake)
		if len(got) != 3 || got[1].ToolCalls != 1 || got[2].ToolCallID != call.CallID || !sameJSON(t, upstreamTools(fake), []string{"weather"}) {
			t.Fatalf("the upstream got %+v", got)
		}
		items, err := a.Responses.InputItems.List(ctx, r2.ID, responses.InputItemListParams{})
		if err != nil || len(items.Data) != 1 || items.Data[0].Type != "function_call_output" {
			t.Fatalf("input items %+v %v", items, err)
		}
	})

	t.Run("responses streamed and resumed mid-arguments", func(t *testing.T) {
		fake.Always(llmfake.Step{TokenDelay: 80 * time.Millisecond})
		defer fake.Always(llmfake.Step{})
		tools := []responses.ToolUnionParam{{OfFunction: &responses.FunctionToolParam{Name: "clock", Parameters: weatherParams, Strict: openai.Bool(false)}}}
		s := a.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("what does clock say?"), Tools: tools, Background: openai.Bool(true)})
		var id string
		var args strings.Builder
		var last int64
		for s.Next() {
			ev := s.Current()
			last = ev.SequenceNumber
			if ev.Type == "response.created" {
				id = ev.Response.ID
			}
			if ev.Type == "response.function_call_arguments.delta" {
				args.WriteString(ev.Delta)
				break // the connection drops inside the call's arguments
			}
		}
		s.Close()
		if id == "" || args.Len() == 0 {
			t.Fatalf("first stream: id %q, arguments %q, %v", id, args.String(), s.Err())
		}
		r := b.Responses.GetStreaming(ctx, id, responses.ResponseGetParams{StartingAfter: openai.Int(last)})
		var done, final responses.ResponseFunctionToolCall
		for r.Next() {
			ev := r.Current()
			if ev.SequenceNumber <= last {
				t.Fatalf("resumed after %d, got %d", last, ev.SequenceNumber)
			}
			last = ev.SequenceNumber
			switch ev.Type {
			case "response.function_call_arguments.delta":
				args.WriteString(ev.Delta)
			case "response.output_item.done":
				done = ev.Item.AsFunctionCall()
			case "response.completed":
				final = ev.Response.Output[0].AsFunctionCall()
			}
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		if args.String() != final.Arguments || done.Arguments != final.Arguments || final.Name != "clock" || !json.Valid([]byte(final.Arguments)) {
			t.Fatalf("arguments streamed %q, item done %q, completed %+v", args.String(), done.Arguments, final)
		}
	})

	t.Run("jobs API session of three turns", func(t *testing.T) {
		c := client.New(apis[0].URL(), client.WithAPIKey(keyAcme))
		tools := []client.Tool{{Type: "function", Function: client.Function{Name: "weather", Parameters: weatherParams}}}
		run := func(r client.SubmitRequest) client.Job {
			t.Helper()
			r.SessionID, r.Tools = "agent-1", tools
			sub, err := c.Submit(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			j, err := c.Wait(ctx, sub.JobID)
			if err != nil || j.Status != "succeeded" {
				t.Fatalf("job %+v %v", j, err)
			}
			return j
		}
		j1 := run(client.SubmitRequest{Message: "check weather in Rome"})
		if j1.Result.FinishReason != "tool_calls" || len(j1.Result.ToolCalls) != 1 || j1.Result.ToolCalls[0].Function.Name != "weather" {
			t.Fatalf("turn 1: %+v", j1.Result)
		}
		callID := j1.Result.ToolCalls[0].ID
		j2 := run(client.SubmitRequest{ToolResults: []client.ToolResult{{ToolCallID: callID, Content: "25°C"}}})
		if j2.Result.Content != llmfake.Reply("25°C") || j2.Result.FinishReason != "stop" {
			t.Fatalf("turn 2: %+v", j2.Result)
		}
		j3 := run(client.SubmitRequest{Message: "thanks"})
		if j3.Result.Content != llmfake.Reply("thanks") {
			t.Fatalf("turn 3: %+v", j3.Result)
		}
		want := []llmfake.Message{{Role: "user", Content: "check weather in Rome"}, {Role: "assistant", ToolCalls: 1},
			{Role: "tool", Content: "25°C", ToolCallID: callID}, {Role: "assistant", Content: llmfake.Reply("25°C")}, {Role: "user", Content: "thanks"}}
		if got := lastRequest(fake); !sameJSON(t, got, want) || !sameJSON(t, upstreamTools(fake), []string{"weather"}) {
			t.Fatalf("the upstream got %+v", got)
		}
		hist, err := c.History(ctx, "agent-1")
		if err != nil {
			t.Fatal(err)
		}
		var roles []string
		for _, m := range hist {
			roles = append(roles, m.Role)
		}
		if !sameJSON(t, roles, []string{"user", "assistant", "tool", "assistant", "user", "assistant"}) ||
			len(hist[1].ToolCalls) != 1 || hist[2].ToolCallID != callID {
			t.Fatalf("history %+v", hist)
		}
	})
}

func streamChat(ctx context.Context, t *testing.T, c openai.Client, p openai.ChatCompletionNewParams) openai.ChatCompletionAccumulator {
	t.Helper()
	s := c.Chat.Completions.NewStreaming(ctx, p)
	acc := openai.ChatCompletionAccumulator{}
	for s.Next() {
		acc.AddChunk(s.Current())
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if len(acc.Choices) != 1 {
		t.Fatalf("streamed %+v", acc)
	}
	return acc
}

func pollResponse(ctx context.Context, t *testing.T, c openai.Client, r *responses.Response) *responses.Response {
	t.Helper()
	for r.Status != "completed" {
		if r.Status == "failed" || r.Status == "cancelled" {
			t.Fatalf("response %s: %+v", r.Status, r.Error)
		}
		time.Sleep(20 * time.Millisecond)
		var err error
		if r, err = c.Responses.Get(ctx, r.ID, responses.ResponseGetParams{}); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// The same loop against an Anthropic upstream: tools, tool_use and
// tool_result travel in the Messages API's own wire format.
func TestAgentLoopAgainstAnthropic(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewAnthropic(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_LLM_PROVIDER": "anthropic", "CHATFLEET_LLM_BASE_URL": fake.URL(),
		"CHATFLEET_LLM_MODEL": "fake-claude", "CHATFLEET_LLM_API_KEY": llmfake.Key})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	msgs := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("ask weather and clock")}
	acc := streamChat(ctx, t, oa, openai.ChatCompletionNewParams{Model: "fake-claude", Messages: msgs, Tools: chatTools()})
	calls := acc.Choices[0].Message.ToolCalls
	if acc.Choices[0].FinishReason != "tool_calls" || len(calls) != 2 || calls[0].Function.Name != "weather" || calls[1].Function.Name != "clock" ||
		!json.Valid([]byte(calls[1].Function.Arguments)) {
		t.Fatalf("streamed calls %+v", acc.Choices[0])
	}
	body := fake.LastBody()
	tool := body["tools"].([]any)[0].(map[string]any)
	if tool["name"] != "weather" || !sameJSON(t, tool["input_schema"], weatherParams) {
		t.Fatalf("the upstream got tools %v", body["tools"])
	}
	msgs = append(msgs, acc.Choices[0].Message.ToParam(), openai.ToolMessage("rain", calls[0].ID), openai.ToolMessage("noon", calls[1].ID))
	final, err := oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "fake-claude", Messages: msgs, Tools: chatTools()})
	if err != nil {
		t.Fatal(err)
	}
	if final.Choices[0].FinishReason != "stop" || final.Choices[0].Message.Content != llmfake.Reply("rainnoon") {
		t.Fatalf("final %+v", final.Choices[0])
	}
	// The calls went back as tool_use blocks, the results as one user
	// message of tool_result blocks.
	sent := fake.LastBody()["messages"].([]any)
	use := sent[1].(map[string]any)["content"].([]any)
	results := sent[2].(map[string]any)["content"].([]any)
	if len(sent) != 3 || len(use) != 2 || use[0].(map[string]any)["type"] != "tool_use" || use[1].(map[string]any)["id"] != calls[1].ID ||
		len(results) != 2 || results[0].(map[string]any)["type"] != "tool_result" || results[1].(map[string]any)["tool_use_id"] != calls[1].ID {
		t.Fatalf("the upstream got %v", sent)
	}

	// The jobs API's session loop against the same upstream.
	c := client.New(apis[0].URL())
	tools := []client.Tool{{Type: "function", Function: client.Function{Name: "weather", Parameters: weatherParams}}}
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "claude-agent", Message: "weather in Lyon?", Tools: tools})
	if err != nil {
		t.Fatal(err)
	}
	j1, err := c.Wait(ctx, sub.JobID)
	if err != nil || j1.Status != "succeeded" || len(j1.Result.ToolCalls) != 1 || j1.Result.FinishReason != "tool_calls" {
		t.Fatalf("turn 1: %+v %v", j1, err)
	}
	sub, err = c.Submit(ctx, client.SubmitRequest{SessionID: "claude-agent", Tools: tools,
		ToolResults: []client.ToolResult{{ToolCallID: j1.Result.ToolCalls[0].ID, Content: "windy"}}})
	if err != nil {
		t.Fatal(err)
	}
	j2, err := c.Wait(ctx, sub.JobID)
	if err != nil || j2.Result == nil || j2.Result.Content != llmfake.Reply("windy") {
		t.Fatalf("turn 2: %+v %v", j2, err)
	}
	sent = fake.LastBody()["messages"].([]any)
	if len(sent) != 3 || sent[2].(map[string]any)["content"].([]any)[0].(map[string]any)["tool_use_id"] != j1.Result.ToolCalls[0].ID {
		t.Fatalf("the upstream got %v", sent)
	}

	// JSON mode has no Anthropic equivalent: refused by name before anything is queued.
	_, err = oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "fake-claude", Messages: msgs[:1],
		ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}}})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != 400 || oe.Param != "response_format" {
		t.Fatalf("json_object on Anthropic: %v", err)
	}
}

// Two parallel tool calls from an upstream with each known streaming quirk
// reach openai-go, streamed, as two calls with their own ids, names and
// complete arguments.
func TestParallelToolCallQuirksReachTheSDK(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, nil))
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, quirk := range []string{llmfake.QuirkIndexZero, llmfake.QuirkNoIndex, llmfake.QuirkFinishEvery, llmfake.QuirkNoFinish} {
		t.Run(quirk, func(t *testing.T) {
			fake.Always(llmfake.Step{Quirk: quirk})
			acc := streamChat(ctx, t, oa, openai.ChatCompletionNewParams{Model: "fake-model",
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("weather then clock")}, Tools: chatTools()})
			ch := acc.Choices[0]
			want := `{"query":"weather then clock"}`
			if ch.FinishReason != "tool_calls" || len(ch.Message.ToolCalls) != 2 {
				t.Fatalf("%s: %+v", quirk, ch)
			}
			for k, name := range []string{"weather", "clock"} {
				c := ch.Message.ToolCalls[k]
				if c.Function.Name != name || c.Function.Arguments != want || c.ID == "" {
					t.Fatalf("%s: call %d %+v", quirk, k, c)
				}
			}
			if ch.Message.ToolCalls[0].ID == ch.Message.ToolCalls[1].ID {
				t.Fatalf("%s: one id for two calls", quirk)
			}
		})
	}
}

// A worker SIGKILLed while a tool call's arguments stream through it: the
// job is taken over, and the client following it sees the retry, then one
// complete set of arguments, the one in the result.
func TestToolCallSurvivesAWorkerKill(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	fake.Always(llmfake.Step{TokenDelay: 400 * time.Millisecond})
	extra := providerEnv(fake, map[string]string{"CHATFLEET_JOB_LEASE": "2s"})
	apis, workers := fleet(t, rd, 1, 1, extra)
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "kill-tool", Message: "use weather please",
		Tools: []client.Tool{{Type: "function", Function: client.Function{Name: "weather", Parameters: weatherParams}}}})
	if err != nil {
		t.Fatal(err)
	}
	s := follow(ctx, c, sub.JobID)
	waitUntil(t, 10*time.Second, "a fragment of the arguments", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, ev := range s.events {
			if ev.Type == "tool_call" && ev.Arguments != "" {
				return true
			}
		}
		return false
	})
	testkit.StartProc(t, "worker-1", workerBin, fleetEnv(rd.URL(), extra))
	workers[0].Signal(syscall.SIGKILL)
	j, err := c.Wait(ctx, sub.JobID)
	if err != nil || j.Status != "succeeded" || len(j.Result.ToolCalls) != 1 {
		t.Fatalf("job %+v %v", j, err)
	}
	waitUntil(t, 5*time.Second, "the done event", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.doneCount > 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	retries, after := 0, ""
	var id string
	for _, ev := range s.events {
		switch ev.Type {
		case "retry":
			retries++
			after, id = "", ""
		case "tool_call":
			if ev.Index != 0 {
				t.Fatalf("a second call appeared: %+v", ev)
			}
			after += ev.Arguments
			if ev.ID != "" {
				id = ev.ID
			}
		}
	}
	if retries != 1 || s.doneCount != 1 || after != j.Result.ToolCalls[0].Function.Arguments || id != j.Result.ToolCalls[0].ID || !json.Valid([]byte(after)) {
		t.Fatalf("%d retries, %d done; after the retry %q (id %q), result %+v", retries, s.doneCount, after, id, j.Result.ToolCalls[0])
	}
}
