package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
)

// Whatever the body, decoding and validation answer a 4xx error naming a
// field, or a request that passes every rule; never a panic or a 5xx.
func FuzzSubmitBody(f *testing.F) {
	for _, s := range []string{
		`{"session_id":"s","message":"m"}`, `{"session_id":"s","message":"m","priority":"high","metadata":{"a":[1,{"b":null}]}}`,
		`{"session_id":"s","message":"m","tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"tool_choice":"required"}`,
		`{"session_id":"s","tool_results":[{"tool_call_id":"c","content":"42"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}}}`,
		`{`, `[]`, `{"session_id":1}`, "{\"message\":\"\xff\"}", `{"session_id":"s","message":"m"} x`,
	} {
		f.Add([]byte(s), "application/json")
	}
	f.Add([]byte(`{"session_id":"s","message":"m"}`), "text/plain")
	e := echo.New()
	f.Fuzz(func(t *testing.T, body []byte, ctype string) {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/chat/jobs", strings.NewReader(string(body)))
		req.Header.Set("Content-Type", ctype)
		c := e.NewContext(req, httptest.NewRecorder())
		var r submitRequest
		err := readJSON(c, &r)
		if err == nil {
			err = r.validate()
		}
		if err == nil {
			if r.SessionID == "" || (strings.TrimSpace(r.Message) == "" && len(r.ToolResults) == 0) || len(r.Message) > maxMessageBytes || len(r.Metadata) > maxMetadataBytes {
				t.Fatalf("accepted an invalid request: %+v", r)
			}
			return
		}
		ae, ok := err.(*Error)
		if !ok || ae.Status < 400 || ae.Status >= 500 || ae.Field == "" || ae.Message == "" {
			t.Fatalf("error %#v is not a 4xx naming a field", err)
		}
	})
}
