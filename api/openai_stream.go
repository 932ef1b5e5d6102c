package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
)

// oaSink turns a job's events into chat.completion.chunk events, or collects
// them into one chat.completion.
type oaSink struct {
	res     *echo.Response
	id      string
	model   string
	created int64
	stream  bool
	usage   bool

	opened  bool
	final   bool
	cut     bool // the stream ended before the job did (a retry mid-reply)
	text    strings.Builder
	calls   map[int]bool // tool calls whose first fragment went out
	done    store.DoneEvent
	failure *store.JobError
}

func (s *oaSink) Open() error {
	if !s.stream {
		return nil
	}
	sseHead(s.res)
	s.opened = true
	return s.chunk(map[string]any{"role": "assistant", "content": ""}, nil, nil)
}

func (s *oaSink) Heartbeat() error {
	if !s.stream {
		return nil
	}
	return sseHeartbeat(s.res)
}

func (s *oaSink) Event(ev store.Event) error {
	p, err := ev.Decode()
	if err != nil {
		return err
	}
	switch p := p.(type) {
	case store.TokenEvent:
		s.text.WriteString(p.Delta)
		if s.stream {
			return s.chunk(map[string]any{"content": p.Delta}, nil, nil)
		}
	case store.ToolCallEvent:
		if !s.stream {
			return nil // the done event's result holds the whole calls
		}
		// The first fragment of a call names it; later ones carry arguments.
		call := map[string]any{"index": p.Index, "function": map[string]any{"arguments": p.Arguments}}
		if s.calls == nil {
			s.calls = map[int]bool{}
		}
		if !s.calls[p.Index] {
			s.calls[p.Index] = true
			call["id"], call["type"] = p.ID, "function"
			call["function"].(map[string]any)["name"] = p.Name
		}
		return s.chunk(map[string]any{"tool_calls": []any{call}}, nil, nil)
	case store.RetryEvent:
		// OpenAI's format cannot take back text already sent: a streamed
		// answer ends with an error the client can retry on (nothing may
		// follow its [DONE], so following stops here); a collected one
		// simply starts over.
		if s.stream {
			s.final, s.cut = true, true
			s.failure = &store.JobError{Code: "upstream_retry", Message: "the provider failed mid-reply; retry the request"}
			if err := s.streamError(); err != nil {
				return err
			}
			return errStreamCut
		}
		s.text.Reset()
	case store.DoneEvent:
		s.final = true
		s.done = p
		if p.Result != nil && p.Result.Model != "" {
			s.model = p.Result.Model
		}
		if !s.stream {
			return nil
		}
		if err := s.chunk(map[string]any{}, s.finishReason(), nil); err != nil {
			return err
		}
		if s.usage {
			if err := s.chunk(nil, nil, s.usageObject()); err != nil {
				return err
			}
		}
		return s.doneLine()
	case store.ErrorEvent, store.CanceledEvent:
		s.final = true
		s.failure = &store.JobError{Code: "canceled", Message: "the job was canceled"}
		if e, ok := p.(store.ErrorEvent); ok && e.Error != nil {
			s.failure = e.Error
		}
		if s.stream {
			return s.streamError()
		}
	}
	return nil
}

// errStreamCut stops following a job whose stream has ended before it.
var errStreamCut = errors.New("the stream ended before the job")

func (s *oaSink) usageObject() map[string]int {
	var u store.Usage
	if s.done.Usage != nil {
		u = *s.done.Usage
	}
	return map[string]int{"prompt_tokens": u.PromptTokens, "completion_tokens": u.CompletionTokens, "total_tokens": u.PromptTokens + u.CompletionTokens}
}

func (s *oaSink) chunk(delta map[string]any, finish any, usage map[string]int) error {
	c := map[string]any{"id": s.id, "object": "chat.completion.chunk", "created": s.created, "model": s.model}
	if delta != nil {
		c["choices"] = []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}
	} else {
		c["choices"] = []any{}
	}
	if usage != nil {
		c["usage"] = usage
	}
	return s.write(c)
}

func (s *oaSink) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.res, "data: %s\n\n", b); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

func (s *oaSink) streamError() error {
	if err := s.write(map[string]any{"error": map[string]any{"message": s.failure.Message, "type": "server_error", "param": nil, "code": s.failure.Code}}); err != nil {
		return err
	}
	return s.doneLine()
}

func (s *oaSink) doneLine() error {
	if _, err := s.res.Write([]byte("data: [DONE]\n\n")); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

// answer is the non-streamed reply: a chat.completion or an error.
func (s *oaSink) answer(c echo.Context) error {
	if s.failure != nil {
		status := http.StatusBadGateway
		if s.failure.Code == "canceled" {
			status = http.StatusConflict
		}
		return c.JSON(status, map[string]any{"error": map[string]any{"message": s.failure.Message, "type": "server_error", "param": nil, "code": s.failure.Code}})
	}
	return c.JSON(http.StatusOK, completionObject(s.id, s.created, s.model, s.done.Result, s.done.Usage))
}

// completionObject is a chat.completion of a job's result.
func completionObject(id string, created int64, model string, res *store.Result, usage *store.Usage) map[string]any {
	msg := map[string]any{"role": "assistant", "content": nil, "refusal": nil}
	finish := "stop"
	if res != nil {
		if res.Content != "" || len(res.ToolCalls) == 0 {
			msg["content"] = res.Content
		}
		if len(res.ToolCalls) > 0 {
			msg["tool_calls"] = res.ToolCalls
		}
		if res.FinishReason != "" {
			finish = res.FinishReason
		}
	}
	var u store.Usage
	if usage != nil {
		u = *usage
	}
	return map[string]any{
		"id": id, "object": "chat.completion", "created": created, "model": model,
		"choices": []any{map[string]any{"index": 0, "message": msg, "finish_reason": finish, "logprobs": nil}},
		"usage":   map[string]int{"prompt_tokens": u.PromptTokens, "completion_tokens": u.CompletionTokens, "total_tokens": u.PromptTokens + u.CompletionTokens},
	}
}

// finishReason is the reply's: stop, length or tool_calls.
func (s *oaSink) finishReason() string {
	if r := s.done.Result; r != nil && r.FinishReason != "" {
		return r.FinishReason
	}
	return "stop"
}
