package api

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Writing one token event to an SSE client (format and flush).
func BenchmarkSSEWrite(b *testing.B) {
	rec := httptest.NewRecorder()
	s := &sseSink{res: echo.NewResponse(rec, echo.New())}
	ev := store.Event{Seq: 42, Type: store.EventToken, Data: `{"seq":42,"delta":" lorem ipsum dolor"}`}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Event(ev); err != nil {
			b.Fatal(err)
		}
		rec.Body.Reset()
	}
}

// Reading an 8 MiB /v1 body (a request with many large tool schemas): the
// allocation is the body once, not io.ReadAll's growing copies.
func BenchmarkReadOpenAIBody(b *testing.B) {
	body := strings.Repeat("x", 8<<20)
	e := echo.New()
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/v1/chat/completions", strings.NewReader(body))
		c := e.NewContext(req, httptest.NewRecorder())
		got, err := readOpenAIBody(c)
		if err != nil || len(got) != len(body) {
			b.Fatal(len(got), err)
		}
	}
}

// Decoding and validating the largest /v1 request by its tools (128 tools
// of a 64 KiB schema, 8.4 MB) into the job's payload, as the API does
// before the submit: the bytes allocated per request against its body.
func BenchmarkDecodeLargeToolsRequest(b *testing.B) {
	body := testkit.LargeToolsBody("chatfleet", 128)
	e := echo.New()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		c := e.NewContext(httptest.NewRequest("POST", "/v1/chat/completions", bytes.NewReader(body)), httptest.NewRecorder())
		var r oaRequest
		if err := readKnown(c, &r, oaFields, "Chat Completions"); err != nil {
			b.Fatal(err)
		}
		msgs, err := r.conversation()
		if err != nil {
			b.Fatal(err)
		}
		params, err := r.params()
		if err != nil {
			b.Fatal(err)
		}
		p := tasks.ChatPayload{JobID: "job_x", Messages: msgs, Params: params}
		if _, err := p.Encode(); err != nil {
			b.Fatal(err)
		}
	}
}
