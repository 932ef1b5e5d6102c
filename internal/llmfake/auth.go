package llmfake

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// A fake refuses what its upstream would: the wrong path or method, and a
// call without the expected key.

// Key is the API key a fake expects unless ExpectKey says otherwise.
const Key = "test-key"

// ExpectKey sets the API key calls must carry (default Key): OpenAI's in
// `Authorization: Bearer <key>`, Anthropic's in `x-api-key` (or as a bearer
// token, which its SDK sends). "" makes the fake a server without a key,
// as a local vLLM or Ollama is: it takes any call, and Keys shows what came.
func (f *Fake) ExpectKey(k string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.key = k
}

// ExpectRefusals tells the fake that the test sends calls it must refuse,
// so that they are not reported as a failure when the test ends.
func (f *Fake) ExpectRefusals() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refusalsExpected = true
}

// Keys returns the API key each call carried, in order ("" for a call without one).
func (f *Fake) Keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.keys...)
}

// Refusals describes each call refused before it was served (wrong method,
// path or key, a missing header), in order: "401 POST /v1/messages: invalid x-api-key".
func (f *Fake) Refusals() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.refusals...)
}

// sentKey is the API key a call carries where its kind of upstream reads it.
func (f *Fake) sentKey(h http.Header) string {
	// "Bearer" alone is no key; any other scheme is kept whole, a wrong key.
	auth := strings.TrimSpace(h.Get("Authorization"))
	bearer := auth
	if auth == "Bearer" || strings.HasPrefix(auth, "Bearer ") {
		bearer = strings.TrimSpace(auth[len("Bearer"):])
	}
	if f.kind == "anthropic" {
		// The Messages API's own header; its Go SDK sends the key as a bearer token.
		return cmp.Or(h.Get("X-Api-Key"), bearer)
	}
	return bearer
}

// refuse answers a call that the real upstream would not serve, in its
// status and error body, and reports whether it did: any path but the
// endpoint's (404), any method but POST (405), no key or a wrong one (401),
// and for Anthropic no anthropic-version header (400).
func (f *Fake) refuse(w http.ResponseWriter, r *http.Request) bool {
	f.mu.Lock()
	want := f.key
	f.mu.Unlock()
	got := f.sentKey(r.Header)
	status, errType, code, msg := 0, "invalid_request_error", "", ""
	if f.kind == "openai" {
		switch {
		case r.URL.Path != "/v1/chat/completions":
			status, msg = http.StatusNotFound, fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path)
		case r.Method != http.MethodPost:
			status, msg = http.StatusMethodNotAllowed, fmt.Sprintf("Method Not Allowed (%s %s)", r.Method, r.URL.Path)
		case want != "" && got == "":
			status, msg = http.StatusUnauthorized, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
		case want != "" && got != want:
			status, code, msg = http.StatusUnauthorized, "invalid_api_key", "Incorrect API key provided: "+redact(got)+". You can find your API key at https://platform.openai.com/account/api-keys."
		}
	} else {
		switch {
		case r.URL.Path != "/v1/messages":
			status, errType, msg = http.StatusNotFound, "not_found_error", "Not Found"
		case r.Method != http.MethodPost:
			status, msg = http.StatusMethodNotAllowed, "Method Not Allowed"
		case want != "" && got == "":
			status, errType, msg = http.StatusUnauthorized, "authentication_error", "x-api-key header is required"
		case want != "" && got != want:
			status, errType, msg = http.StatusUnauthorized, "authentication_error", "invalid x-api-key"
		case r.Header.Get("Anthropic-Version") == "":
			status, msg = http.StatusBadRequest, "anthropic-version: header is required"
		}
	}
	if status == 0 {
		return false
	}
	f.mu.Lock()
	f.refusals = append(f.refusals, fmt.Sprintf("%d %s %s: %s", status, r.Method, r.URL.Path, msg))
	f.mu.Unlock()
	if status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", http.MethodPost)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if f.kind == "openai" {
		var c any
		if code != "" {
			c = code
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": errType, "param": nil, "code": c}})
	} else {
		_ = json.NewEncoder(w).Encode(map[string]any{"type": "error", "error": map[string]any{"type": errType, "message": msg}})
	}
	return true
}

// redact shows a wrong key as OpenAI does: its first and last characters only.
func redact(k string) string {
	if len(k) <= 8 {
		return strings.Repeat("*", len(k))
	}
	return k[:3] + strings.Repeat("*", len(k)-7) + k[len(k)-4:]
}
