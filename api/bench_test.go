package api

import (
	"net/http/httptest"
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
