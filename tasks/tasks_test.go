package tasks

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

func validPayload() ChatPayload {
	return ChatPayload{JobID: NewJobID("default", "s1"), Tenant: "default", SessionID: "s1", Message: "hi",
		Priority: PriorityNormal, SubmittedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func TestRoundTrip(t *testing.T) {
	p := validPayload()
	p.Metadata = []byte(`{"a":1}`)
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeChat(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.JobID != p.JobID || got.Message != p.Message || !got.SubmittedAt.Equal(p.SubmittedAt) ||
		string(got.Metadata) != `{"a":1}` || got.Version != 2 {
		t.Fatalf("got %+v want %+v as version 2 (no trace context)", got, p)
	}
	// With a trace context it is version 3, which workers before it refuse.
	p.Trace = map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	b, _ = p.Encode()
	if got, err = DecodeChat(b); err != nil || got.Version != 3 || got.Trace["traceparent"] != p.Trace["traceparent"] {
		t.Fatalf("with a trace: %+v %v", got, err)
	}
	// With a Responses chain by reference it is version 4: a worker of the
	// release before (which reads up to 3) refuses it rather than running
	// the messages without the chain they continue.
	p.Messages = []ChatMessage{{Role: "user", Content: "hi"}}
	p.Chain = &ChainRef{Previous: "resp_x", Instructions: "be brief"}
	b, _ = p.Encode()
	if got, err = DecodeChat(b); err != nil || got.Version != 4 || *got.Chain != *p.Chain {
		t.Fatalf("with a chain: %+v %v", got, err)
	}
	p.Messages = nil
	b, _ = p.Encode()
	if _, err = DecodeChat(b); !errors.Is(err, ErrBadPayload) {
		t.Fatalf("a chain without the messages that follow it: %v", err)
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := map[string]string{
		"not json":        `\x00\x01garbage`,
		"no version":      `{"job_id":"j","tenant":"t","session_id":"s","message":"m","priority":"normal","submitted_at":"2026-01-01T00:00:00Z"}`,
		"unknown version": `{"v":0,"job_id":"j"}`,
		"unknown field":   `{"v":1,"job_id":"j","tenant":"t","session_id":"s","message":"m","priority":"normal","submitted_at":"2026-01-01T00:00:00Z","x":1}`,
		"missing message": `{"v":1,"job_id":"j","tenant":"t","session_id":"s","priority":"normal","submitted_at":"2026-01-01T00:00:00Z"}`,
		"bad priority":    `{"v":1,"job_id":"j","tenant":"t","session_id":"s","message":"m","priority":"urgent","submitted_at":"2026-01-01T00:00:00Z"}`,
		"wrong type":      `{"v":1,"job_id":5}`,
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeChat([]byte(raw))
			if !errors.Is(err, ErrBadPayload) {
				t.Fatalf("err = %v, want ErrBadPayload", err)
			}
		})
	}
	_, err := DecodeChat([]byte(`{"v":-1}`))
	if err == nil || !strings.Contains(err.Error(), "unknown version -1") {
		t.Fatalf("version error should say which: %v", err)
	}
}

// A payload of a later release (a field this build lacks included) is not a
// bad one: it says its version, and a worker of that release can run it.
func TestDecodeNewerVersion(t *testing.T) {
	newer := fmt.Sprintf(`{"v":%d,"job_id":"j","tenant":"t","session_id":"s","message":"m","priority":"normal","submitted_at":"2026-01-01T00:00:00Z","later":1}`, PayloadVersion+1)
	_, err := DecodeChat([]byte(newer))
	if !errors.Is(err, ErrNewerPayload) || errors.Is(err, ErrBadPayload) ||
		!strings.Contains(err.Error(), fmt.Sprintf("version %d", PayloadVersion+1)) {
		t.Fatalf("err = %v, want ErrNewerPayload naming the version", err)
	}
}

// A version 1 payload (queued before an upgrade) still runs, and a version
// 2 payload carries the whole chat contract through a round trip.
func TestDecodeReadsVersion1AndCarriesTools(t *testing.T) {
	v1 := `{"v":1,"job_id":"j","tenant":"t","session_id":"s","message":"m","priority":"normal","submitted_at":"2026-01-01T00:00:00Z"}`
	if p, err := DecodeChat([]byte(v1)); err != nil || p.Message != "m" {
		t.Fatalf("version 1: %+v %v", p, err)
	}
	strict := true
	p := ChatPayload{JobID: "j", Tenant: "t", SessionID: "s", Priority: PriorityNormal, SubmittedAt: time.Now().UTC(),
		Messages: []ChatMessage{
			{Role: "user", Content: "look", Parts: []ContentPart{{Type: "text", Text: "look"}, {Type: "image_url", ImageURL: "data:image/png;base64,AAAA"}}},
			{Role: "assistant", ToolCalls: []ToolCall{{ID: "call_1", Type: "function", Function: FunctionCall{Name: "f", Arguments: `{"a":1}`}}}},
			{Role: "tool", ToolCallID: "call_1", Content: "42"},
		},
		Params: &GenParams{Tools: []Tool{{Type: "function", Function: FunctionDef{Name: "f", Parameters: json.RawMessage(`{"type":"object"}`)}}},
			ToolChoice:     &ToolChoice{Mode: "function", Name: "f"},
			ResponseFormat: &ResponseFormat{Type: "json_schema", JSONSchema: &JSONSchema{Name: "x", Schema: json.RawMessage(`{"type":"object"}`), Strict: &strict}}},
	}
	b, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeChat(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || len(got.Messages) != 3 || got.Messages[0].Parts[1].ImageURL != "data:image/png;base64,AAAA" ||
		got.Messages[1].ToolCalls[0].Function.Arguments != `{"a":1}` || got.Messages[2].ToolCallID != "call_1" ||
		string(got.Params.Tools[0].Function.Parameters) != `{"type":"object"}` || got.Params.ToolChoice.Name != "f" ||
		string(got.Params.ResponseFormat.JSONSchema.Schema) != `{"type":"object"}` || !got.Params.Structured() {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestJobIDs(t *testing.T) {
	a, b := NewJobID("acme", "s1"), NewJobID("acme", "s1")
	if a == b || !ValidJobID(a) || !ValidJobID(b) {
		t.Fatalf("ids %q %q", a, b)
	}
	if rkeys.Bucket(a) != rkeys.SessionBucket("acme", "s1") {
		t.Fatalf("id %q is not in its session's bucket", a)
	}
	k1, k2 := IdempotentJobID("acme", "key-1", "s1"), IdempotentJobID("acme", "key-1", "s1")
	if k1 != k2 || !ValidJobID(k1) || rkeys.Bucket(k1) != rkeys.SessionBucket("acme", "s1") {
		t.Fatalf("idempotent ids %q %q", k1, k2)
	}
	if IdempotentJobID("beta", "key-1", "s1") == k1 {
		t.Fatal("two tenants with one key must get different jobs")
	}
	for _, bad := range []string{"", "job_", "job_../../etc", "JOB_" + a[4:], a + "x"} {
		if ValidJobID(bad) {
			t.Errorf("ValidJobID(%q) = true", bad)
		}
	}
}

// Spread queues: the k-th of s lies in the k-th of s parts of the slot
// space; a job always lands in the same one.
func TestSpreadQueues(t *testing.T) {
	if q := SpreadQueue("chatfleet-normal", "job_00x", 1); q != "chatfleet-normal" {
		t.Fatalf("no spread: %s", q)
	}
	set := QueueSet(4)
	if len(set) != 12 {
		t.Fatalf("queue set %v", set)
	}
	for q, w := range set {
		if p := strings.Split(q, "-")[1]; w != weights[p] {
			t.Errorf("%s: weight %d, want %d", q, w, weights[p])
		}
	}
	names := spreadNames("chatfleet-normal", 4)
	for k, n := range names {
		if set[n] != 3 {
			t.Errorf("%s missing from the set", n)
		}
		if s := rkeys.Slot(n); s/4096 != k {
			t.Errorf("%s: slot %d, want within %d..%d", n, s, k*4096, (k+1)*4096-1)
		}
	}
	seen := map[string]bool{}
	for i := range 200 {
		id := NewJobID("t", fmt.Sprint("s", i))
		q := SpreadQueue("chatfleet-normal", id, 4)
		if q != SpreadQueue("chatfleet-normal", id, 4) || set[q] == 0 {
			t.Fatalf("job %s: queue %q", id, q)
		}
		seen[q] = true
	}
	if len(seen) != 4 {
		t.Fatalf("200 jobs used %d of 4 queues", len(seen))
	}
	t.Log(names)
}

// A payload whose body travels by reference encodes without its body as
// version 5, decodes as such (no message needed), and takes its body back
// from the payload it was submitted with, its own other fields standing.
func TestLeanPayloadTakesItsBodyBack(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	full := ChatPayload{JobID: "j", Tenant: "t", SessionID: "s", Priority: PriorityNormal, SubmittedAt: at, Model: "m",
		Messages: []ChatMessage{{Role: "user", Content: "hi"}}, Metadata: json.RawMessage(`{"a":1}`),
		Params: &GenParams{Tools: []Tool{{Type: "function", Function: FunctionDef{Name: "f", Parameters: json.RawMessage(`{"type":"object"}`)}}}},
		Chain:  &ChainRef{Previous: "resp_1"}}
	b, err := full.Lean().Encode()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "hi") || strings.Contains(string(b), "tools") {
		t.Fatalf("the lean payload carries its body: %s", b)
	}
	lean, err := DecodeChat(b)
	if err != nil || lean.Version != 5 || !lean.Body || lean.Model != "m" || lean.Chain == nil {
		t.Fatalf("decoded %+v, %v", lean, err)
	}
	lean.SubmittedAt = at.Add(time.Hour) // a re-run's
	got := lean.WithBody(full)
	if got.Body || got.SubmittedAt != at.Add(time.Hour) || len(got.Messages) != 1 || got.Params == nil ||
		string(got.Params.Tools[0].Function.Parameters) != `{"type":"object"}` || string(got.Metadata) != `{"a":1}` {
		t.Fatalf("with its body: %+v", got)
	}
}
