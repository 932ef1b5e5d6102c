package api

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
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
