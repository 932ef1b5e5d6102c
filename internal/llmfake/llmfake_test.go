package llmfake

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// The fakes refuse what their upstreams refuse, with the upstream's status
// and error body, and serve the rest.
func TestFakesRefuseAsTheirUpstreams(t *testing.T) {
	oa, an := NewOpenAI(t), NewAnthropic(t)
	oa.ExpectRefusals()
	an.ExpectRefusals()
	const body = `{"model":"m","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}`
	anthropic := func(h map[string]string) map[string]string {
		out := map[string]string{"anthropic-version": "2023-06-01"}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	for _, tc := range []struct {
		name, method, url string
		header            map[string]string
		status            int
		want              string // a part of the error body; "" for a served call
	}{
		{"openai served", "POST", oa.URL() + "/chat/completions", map[string]string{"Authorization": "Bearer " + Key}, 200, ""},
		{"openai without a key", "POST", oa.URL() + "/chat/completions", nil, 401, `"message":"You didn't provide an API key.`},
		{"openai with an empty bearer", "POST", oa.URL() + "/chat/completions", map[string]string{"Authorization": "Bearer"}, 401, `You didn't provide an API key`},
		{"openai with a wrong key", "POST", oa.URL() + "/chat/completions", map[string]string{"Authorization": "Bearer sk-wrong-0123456789"}, 401, `"code":"invalid_api_key","message":"Incorrect API key provided: sk-************6789.`},
		{"openai with its key in Anthropic's header", "POST", oa.URL() + "/chat/completions", map[string]string{"x-api-key": Key}, 401, `You didn't provide an API key`},
		{"openai on a wrong path", "POST", oa.URL() + "/completions", map[string]string{"Authorization": "Bearer " + Key}, 404, `"message":"Invalid URL (POST /v1/completions)"`},
		{"openai by GET", "GET", oa.URL() + "/chat/completions", map[string]string{"Authorization": "Bearer " + Key}, 405, `Method Not Allowed`},
		{"anthropic served by x-api-key", "POST", an.URL() + "/v1/messages", anthropic(map[string]string{"x-api-key": Key}), 200, ""},
		{"anthropic served by bearer", "POST", an.URL() + "/v1/messages", anthropic(map[string]string{"Authorization": "Bearer " + Key}), 200, ""},
		{"anthropic without a key", "POST", an.URL() + "/v1/messages", anthropic(nil), 401, `{"error":{"message":"x-api-key header is required","type":"authentication_error"},"type":"error"}`},
		{"anthropic with a wrong key", "POST", an.URL() + "/v1/messages", anthropic(map[string]string{"x-api-key": "wrong"}), 401, `{"error":{"message":"invalid x-api-key","type":"authentication_error"},"type":"error"}`},
		{"anthropic without a version", "POST", an.URL() + "/v1/messages", map[string]string{"x-api-key": Key}, 400, `anthropic-version: header is required`},
		{"anthropic on a wrong path", "POST", an.URL() + "/messages", anthropic(map[string]string{"x-api-key": Key}), 404, `"type":"not_found_error"`},
		{"anthropic by PUT", "PUT", an.URL() + "/v1/messages", anthropic(map[string]string{"x-api-key": Key}), 405, `Method Not Allowed`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, tc.url, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			raw, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.status || !strings.Contains(string(raw), tc.want) {
				t.Fatalf("%d %s; want %d with %s", res.StatusCode, raw, tc.status, tc.want)
			}
			if tc.want != "" && !json.Valid(raw) {
				t.Fatalf("error body is not JSON: %s", raw)
			}
		})
	}
	// Refused calls are counted, described and never planned or quota'd.
	if oa.Calls() != 7 || len(oa.Refusals()) != 6 || len(oa.Requests()) != 1 {
		t.Fatalf("openai: %d calls, refusals %q, %d served", oa.Calls(), oa.Refusals(), len(oa.Requests()))
	}
	if an.Calls() != 7 || len(an.Refusals()) != 5 || len(an.Requests()) != 2 {
		t.Fatalf("anthropic: %d calls, refusals %q, %d served", an.Calls(), an.Refusals(), len(an.Requests()))
	}
}

// A fake without a key (a local server) takes any call, and shows what came.
func TestFakeWithoutAKeyTakesAnyCall(t *testing.T) {
	f := NewOpenAI(t)
	f.ExpectKey("")
	for _, auth := range []string{"", "Bearer stray"} {
		req, _ := http.NewRequest("POST", f.URL()+"/chat/completions", strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("Authorization %q: %d", auth, res.StatusCode)
		}
	}
	if got := f.Keys(); len(got) != 2 || got[0] != "" || got[1] != "stray" {
		t.Fatalf("keys %q", got)
	}
}
