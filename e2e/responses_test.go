package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

func responsesClient(base, key string) openai.Client {
	return openai.NewClient(option.WithBaseURL(base+"/v1"), option.WithAPIKey(key), option.WithMaxRetries(0))
}

func input(s string) responses.ResponseNewParamsInputUnion {
	return responses.ResponseNewParamsInputUnion{OfString: openai.String(s)}
}

func lastRequest(fake *llmfake.Fake) []llmfake.Message {
	reqs := fake.Requests()
	if len(reqs) == 0 {
		return nil
	}
	return reqs[len(reqs)-1]
}

// The official openai-go v3 Responses client against the fleet (2 API
// processes, 1 worker, an OpenAI-compatible upstream).
func TestResponsesAPIWithTheOfficialClient(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 2, 1, providerEnv(fake, map[string]string{"CHATFLEET_API_KEYS": keysEnv()}))
	a, b := responsesClient(apis[0].URL(), keyAcme), responsesClient(apis[1].URL(), keyAcme)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var first *responses.Response
	t.Run("plain create", func(t *testing.T) {
		r, err := a.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("hello responses"), Instructions: openai.String("be brief")})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != "completed" || r.OutputText() != llmfake.Reply("hello responses") || r.Usage.OutputTokens == 0 || !strings.HasPrefix(r.ID, "resp_") {
			t.Fatalf("response %s %q usage %+v", r.Status, r.OutputText(), r.Usage)
		}
		want := []llmfake.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "hello responses"}}
		if got := lastRequest(fake); !slices.Equal(got, want) {
			t.Fatalf("the provider got %+v", got)
		}
		first = r
	})

	t.Run("plain stream", func(t *testing.T) {
		s := a.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("stream this please")})
		var text strings.Builder
		var types []string
		last := int64(-1)
		for s.Next() {
			ev := s.Current()
			if ev.SequenceNumber <= last {
				t.Fatalf("sequence numbers go back: %d after %d", ev.SequenceNumber, last)
			}
			last = ev.SequenceNumber
			types = append(types, ev.Type)
			if ev.Type == "response.output_text.delta" {
				text.WriteString(ev.Delta)
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		if text.String() != llmfake.Reply("stream this please") || types[0] != "response.created" || types[len(types)-1] != "response.completed" {
			t.Fatalf("streamed %q with events %v", text.String(), types)
		}
	})

	t.Run("background and poll", func(t *testing.T) {
		r, err := a.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("in the background"), Background: openai.Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		if !r.Background || (r.Status != "queued" && r.Status != "in_progress") {
			t.Fatalf("background create: %s %v", r.Status, r.Background)
		}
		for r.Status != "completed" {
			time.Sleep(20 * time.Millisecond)
			if r, err = b.Responses.Get(ctx, r.ID, responses.ResponseGetParams{}); err != nil {
				t.Fatal(err)
			}
			if r.Status == "failed" || r.Status == "cancelled" {
				t.Fatalf("background response %s", r.Status)
			}
		}
		if r.OutputText() != llmfake.Reply("in the background") || r.Usage.TotalTokens == 0 {
			t.Fatalf("polled %q usage %+v", r.OutputText(), r.Usage)
		}
	})

	t.Run("previous_response_id carries the whole chain", func(t *testing.T) {
		second, err := a.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("and then?"), PreviousResponseID: openai.String(first.ID)})
		if err != nil {
			t.Fatal(err)
		}
		want := []llmfake.Message{{Role: "user", Content: "hello responses"}, {Role: "assistant", Content: llmfake.Reply("hello responses")}, {Role: "user", Content: "and then?"}}
		if got := lastRequest(fake); !slices.Equal(got, want) || second.PreviousResponseID != first.ID {
			t.Fatalf("the provider got %+v", got)
		}
		third, err := b.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("deeper"), PreviousResponseID: openai.String(second.ID)})
		if err != nil || third.Status != "completed" {
			t.Fatal(err)
		}
		if got := lastRequest(fake); len(got) != 5 || got[3].Content != llmfake.Reply("and then?") || got[4].Content != "deeper" {
			t.Fatalf("a chain of three: %+v", got)
		}
		// A branch from the first sees only its own chain.
		if _, err := a.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("a branch"), PreviousResponseID: openai.String(first.ID)}); err != nil {
			t.Fatal(err)
		}
		if got := lastRequest(fake); len(got) != 3 || got[2].Content != "a branch" {
			t.Fatalf("a branch: %+v", got)
		}
		items, err := a.Responses.InputItems.List(ctx, second.ID, responses.InputItemListParams{})
		if err != nil || len(items.Data) != 1 {
			t.Fatalf("input items: %+v %v", items, err)
		}
	})

	t.Run("another tenant gets 404", func(t *testing.T) {
		beta := responsesClient(apis[0].URL(), keyBeta)
		_, err := beta.Responses.Get(ctx, first.ID, responses.ResponseGetParams{})
		var oe *openai.Error
		if !errors.As(err, &oe) || oe.StatusCode != http.StatusNotFound {
			t.Fatalf("another tenant: %v", err)
		}
	})

	t.Run("an unsupported parameter is a 400 naming it", func(t *testing.T) {
		_, err := a.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input("x")},
			option.WithJSONSet("prompt_cache_key", "k1"))
		var oe *openai.Error
		if !errors.As(err, &oe) || oe.StatusCode != http.StatusBadRequest || oe.Param != "prompt_cache_key" {
			t.Fatalf("prompt_cache_key: %v", err)
		}
	})

	words := strings.Repeat("word ", 30)
	t.Run("a background stream dropped and resumed on the other node", func(t *testing.T) {
		fake.Always(llmfake.Step{TokenDelay: 60 * time.Millisecond})
		defer fake.Always(llmfake.Step{})
		s := a.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input(words), Background: openai.Bool(true)})
		var text strings.Builder
		var id string
		var last int64
		deltas := 0
		for deltas < 3 && s.Next() {
			ev := s.Current()
			last = ev.SequenceNumber
			if ev.Type == "response.created" {
				id = ev.Response.ID
			}
			if ev.Type == "response.output_text.delta" {
				text.WriteString(ev.Delta)
				deltas++
			}
		}
		s.Close() // the connection drops
		if deltas != 3 || id == "" {
			t.Fatalf("first stream: %d deltas, id %q, %v", deltas, id, s.Err())
		}
		r := b.Responses.GetStreaming(ctx, id, responses.ResponseGetParams{StartingAfter: openai.Int(last)})
		final := ""
		for r.Next() {
			ev := r.Current()
			if ev.SequenceNumber <= last {
				t.Fatalf("resumed at %d, got %d again", last, ev.SequenceNumber)
			}
			switch ev.Type {
			case "response.output_text.delta":
				text.WriteString(ev.Delta)
			case "response.completed":
				final = ev.Response.OutputText()
			}
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		if want := llmfake.Reply(strings.TrimSpace(words)); text.String() != want || final != want {
			t.Fatalf("resumed text %q, final %q, want %q", text.String(), final, want)
		}
	})

	t.Run("cancel aborts the upstream call", func(t *testing.T) {
		fake.Always(llmfake.Step{TokenDelay: 100 * time.Millisecond})
		defer fake.Always(llmfake.Step{})
		calls, aborted := fake.Calls(), fake.Aborted()
		r, err := a.Responses.New(ctx, responses.ResponseNewParams{Model: "fake-model", Input: input(words), Background: openai.Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 10*time.Second, "the upstream call", func() bool { return fake.Calls() > calls })
		time.Sleep(200 * time.Millisecond) // a few tokens in
		c, err := b.Responses.Cancel(ctx, r.ID)
		if err != nil || c.Status != "cancelled" {
			t.Fatalf("cancel: %+v %v", c, err)
		}
		waitUntil(t, 5*time.Second, "the upstream call to be aborted", func() bool { return fake.Aborted() > aborted })
		if g, _ := a.Responses.Get(ctx, r.ID, responses.ResponseGetParams{}); g.Status != "cancelled" {
			t.Fatalf("after cancel: %s", g.Status)
		}
	})

	t.Run("delete", func(t *testing.T) {
		if err := a.Responses.Delete(ctx, first.ID); err != nil {
			t.Fatal(err)
		}
		_, err := a.Responses.Get(ctx, first.ID, responses.ResponseGetParams{})
		var oe *openai.Error
		if !errors.As(err, &oe) || oe.StatusCode != http.StatusNotFound {
			t.Fatalf("after delete: %v", err)
		}
	})
}

// A chain of responses is stored by reference: each record holds its own
// input (a chain of 100 KB inputs, each answered with a 100 KB echo, does
// not grow its records), the
// provider still gets the whole conversation in order, and a conversation
// over CHATFLEET_RESPONSES_MAX_CONVERSATION_BYTES is refused with a 400
// naming previous_response_id, writing nothing.
func TestResponseChainsAreStoredByReference(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{"CHATFLEET_RESPONSES_MAX_CONVERSATION_BYTES": "600000"}))
	big := func(i int) string { return fmt.Sprintf("step %d ", i) + strings.Repeat("x", 100_000) }
	prev, firstSize := "", int64(0)
	for i := 1; i <= 3; i++ {
		body := map[string]any{"model": "fake-model", "input": big(i)}
		if prev != "" {
			body["previous_response_id"] = prev
		}
		r := do(t, http.MethodPost, apis[0].URL()+"/v1/responses", body, nil)
		if r.Status != http.StatusOK || r.Body["status"] != "completed" {
			t.Fatalf("step %d: %d %.300s", i, r.Status, r.Raw)
		}
		prev = r.Body["id"].(string)
		n := rd.Client().StrLen(context.Background(), rkeys.Response(prev)).Val()
		if i == 1 {
			firstSize = n
		}
		if n > firstSize+firstSize/10 {
			t.Errorf("step %d's record holds %d bytes, the first's %d: it grows with the chain", i, n, firstSize)
		}
	}
	msgs, _ := fake.LastBody()["messages"].([]any)
	var roles []string
	for _, m := range msgs {
		roles = append(roles, m.(map[string]any)["role"].(string))
	}
	if got := strings.Join(roles, ","); got != "user,assistant,user,assistant,user" {
		t.Fatalf("the third step sent %s", got)
	}
	if first, _ := msgs[0].(map[string]any)["content"].(string); !strings.HasPrefix(first, "step 1 ") {
		t.Fatalf("the conversation does not start with the first input: %.20q", first)
	}
	keys := rd.Client().DBSize(context.Background()).Val()
	r := do(t, http.MethodPost, apis[0].URL()+"/v1/responses", map[string]any{"model": "fake-model", "input": big(4), "previous_response_id": prev}, nil)
	errObj, _ := r.Body["error"].(map[string]any)
	if r.Status != http.StatusBadRequest || errObj["param"] != "previous_response_id" {
		t.Fatalf("a conversation over the cap: %d %.300s", r.Status, r.Raw)
	}
	if n := rd.Client().DBSize(context.Background()).Val(); n != keys {
		t.Fatalf("the refused request wrote %d keys", n-keys)
	}
}

// `store: false` keeps nothing once the answer is delivered, and DELETE
// removes everything that holds a response's content: no key of Redis names
// the job any more, asynq's copy included.
func TestUnstoredAndDeletedResponsesLeaveNothing(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, nil)
	left := func(respID string) []string {
		suffix := strings.TrimPrefix(respID, "resp_")
		keys, err := rd.Client().Keys(context.Background(), "*"+suffix+"*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}
	r := do(t, http.MethodPost, apis[0].URL()+"/v1/responses", map[string]any{"model": "sim", "input": "secret one", "store": false}, nil)
	if r.Status != http.StatusOK || r.Body["status"] != "completed" {
		t.Fatalf("store false: %d %.300s", r.Status, r.Raw)
	}
	if keys := left(r.Body["id"].(string)); len(keys) != 0 {
		t.Errorf("store false left %v", keys)
	}
	r = do(t, http.MethodPost, apis[0].URL()+"/v1/responses", map[string]any{"model": "sim", "input": "secret two"}, nil)
	if r.Status != http.StatusOK || r.Body["status"] != "completed" {
		t.Fatalf("stored: %d %.300s", r.Status, r.Raw)
	}
	id := r.Body["id"].(string)
	if keys := left(id); len(keys) == 0 {
		t.Fatalf("a stored response keeps nothing before its DELETE")
	}
	if d := do(t, http.MethodDelete, apis[0].URL()+"/v1/responses/"+id, nil, nil); d.Status != http.StatusOK || d.Body["deleted"] != true {
		t.Fatalf("delete: %d %s", d.Status, d.Raw)
	}
	if keys := left(id); len(keys) != 0 {
		t.Errorf("DELETE left %v", keys)
	}
	if g := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs/job_"+strings.TrimPrefix(id, "resp_"), nil, nil); g.Status != http.StatusNotFound {
		t.Errorf("the deleted response's job: %d %s", g.Status, g.Raw)
	}
}
