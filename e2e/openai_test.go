package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// The official OpenAI Go SDK, pointed at the API, gets complete streamed and
// non-streamed replies with usage, and OpenAI-shaped errors.
func TestOpenAISDKUsesTheFleet(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_TOKENS": "6"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs := []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("be brief"), openai.UserMessage("hello fleet")}
	want := "echo: hello fleet lorem ipsum dolor sit amet consectetur"

	got, err := oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "sim", Messages: msgs})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Choices) != 1 || got.Choices[0].Message.Content != want || got.Choices[0].FinishReason != "stop" || got.Object != "chat.completion" {
		t.Fatalf("completion %+v", got)
	}
	if got.Usage.CompletionTokens != 9 || got.Usage.PromptTokens == 0 || got.Usage.TotalTokens != got.Usage.PromptTokens+got.Usage.CompletionTokens {
		t.Fatalf("usage %+v", got.Usage)
	}

	s := oa.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: "sim", Messages: msgs, StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	acc := openai.ChatCompletionAccumulator{}
	chunks := 0
	for s.Next() {
		acc.AddChunk(s.Current())
		chunks++
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if chunks < 4 || len(acc.Choices) != 1 || acc.Choices[0].Message.Content != want || acc.Usage.CompletionTokens != 9 {
		t.Fatalf("streamed %d chunks: %+v usage %+v", chunks, acc.Choices, acc.Usage)
	}

	// An empty messages list is an OpenAI-shaped 400.
	_, err = oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "sim", Messages: nil})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusBadRequest || oe.Param != "messages" || !strings.Contains(oe.Message, "empty") {
		t.Fatalf("empty messages: %v", err)
	}
	// A wrong key is an OpenAI-shaped 401.
	bad := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey("wrong-key-0123456789"), option.WithMaxRetries(0))
	_, err = bad.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "sim", Messages: msgs})
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong key: %v", err)
	}
	models, err := oa.Models.List(ctx)
	if err != nil || len(models.Data) != 1 || models.Data[0].ID != "sim" {
		t.Fatalf("models: %+v %v", models, err)
	}
}

// A client that disconnects from the front door cancels its job.
func TestOpenAIDisconnectCancelsTheJob(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_SIM_TOKENS": "200", "CHATFLEET_SIM_TOKEN_DELAY": "20ms", "CHATFLEET_MODELS": "sim,other"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx, cancel := context.WithCancel(context.Background())
	s := oa.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "sim", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("long one")}})
	var id string
	for s.Next() {
		if c := s.Current(); len(c.Choices) > 0 && c.Choices[0].Delta.Content != "" {
			id = "job_" + strings.TrimPrefix(c.ID, "chatcmpl-")
			break
		}
	}
	cancel()
	_ = s.Close()
	if id == "" {
		t.Fatalf("no token before the disconnect: %v", s.Err())
	}
	j := waitStatus(t, client.New(apis[0].URL()), id, "canceled")
	if j.Error == nil || !strings.Contains(j.Error.Message, "disconnected") {
		t.Fatalf("job after the disconnect: %+v", j)
	}

	// With an allow-list, an unknown model is OpenAI's 404.
	_, err := oa.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-nope", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.StatusCode != http.StatusNotFound || oe.Code != "model_not_found" {
		t.Fatalf("unknown model: %v", err)
	}
}

// A provider fails mid-reply: a streamed Chat Completion cannot take back
// what it sent, so it ends with the upstream_retry error and one [DONE],
// nothing after it, and the job stops (its client will send the request
// again; no provider generates the rest for nobody).
func TestStreamEndsCleanlyOnARetryMidReply(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	fake.SetPlan(func(call int) llmfake.Step {
		if call == 1 {
			return llmfake.Step{CutAfter: 2, TokenDelay: 20 * time.Millisecond}
		}
		return llmfake.Step{TokenDelay: 300 * time.Millisecond}
	})
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, nil))
	res, err := http.Post(apis[0].URL()+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"fake-model","stream":true,"messages":[{"role":"user","content":"a reply of several words"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(res.Body) // the API ends the stream
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	body := string(raw)
	if !strings.Contains(body, "upstream_retry") || strings.Count(body, "data: [DONE]") != 1 || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("stream after a mid-reply failure:\n%s", body)
	}
	_, after, _ := strings.Cut(body, `"id":"chatcmpl-`)
	id := "job_" + after[:max(strings.IndexByte(after, '"'), 0)]
	j := waitStatus(t, client.New(apis[0].URL()), id, "canceled")
	if j.Error == nil {
		t.Fatalf("job after its stream ended: %+v", j)
	}
	time.Sleep(time.Second) // a retry that ran anyway would call again
	if n := fake.Calls(); n > 2 {
		t.Fatalf("the provider was called %d times for a client that had gone", n)
	}
}

// A /v1 request answered whole waits for the job's end only: its worker
// batches the tokens at the unfollowed pace (the log holds the first token,
// the rest in one piece and the end), while a streamed request gets them at
// the followed window. Both answers are the same text.
func TestWholeAnswersDoNotHurryTheTokens(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{
		"CHATFLEET_SIM_TOKENS": "20", "CHATFLEET_SIM_TOKEN_DELAY": "50ms", "CHATFLEET_STREAM_FLUSH_INTERVAL": "100ms",
	})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithMaxRetries(0))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("pace me")}
	whole, err := oa.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "sim", Messages: msgs})
	if err != nil {
		t.Fatal(err)
	}
	s := oa.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "sim", Messages: msgs})
	acc := openai.ChatCompletionAccumulator{}
	var streamedID string
	for s.Next() {
		acc.AddChunk(s.Current())
		streamedID = s.Current().ID
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if acc.Choices[0].Message.Content != whole.Choices[0].Message.Content {
		t.Fatalf("streamed %q, whole %q", acc.Choices[0].Message.Content, whole.Choices[0].Message.Content)
	}
	events := func(chatID string) int { // the job's log, replayed
		r := &streamed{}
		if err := client.New(apis[0].URL()).Stream(ctx, "job_"+strings.TrimPrefix(chatID, "chatcmpl-"), client.StreamOptions{}, r.add); err != nil {
			t.Fatal(err)
		}
		r.check(t, 1)
		return len(r.events)
	}
	if n := events(whole.ID); n != 3 {
		t.Errorf("the whole answer's job logged %d events, want 3 (first token, the rest, done)", n)
	}
	if n := events(streamedID); n < 6 {
		t.Errorf("the streamed answer's job logged %d events, want its tokens in batches of the followed window", n)
	}
}
