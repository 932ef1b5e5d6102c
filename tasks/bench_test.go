package tasks

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

func BenchmarkPayloadEncode(b *testing.B) {
	p := ChatPayload{JobID: NewJobID("acme", "sess_1"), Tenant: "acme", SessionID: "sess_1", Message: "hello there, how are you today?",
		Priority: PriorityNormal, Metadata: []byte(`{"source":"web","tags":["a","b"]}`), SubmittedAt: time.Now()}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Encode(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPayloadDecode(b *testing.B) {
	raw, _ := ChatPayload{JobID: NewJobID("acme", "sess_1"), Tenant: "acme", SessionID: "sess_1", Message: "hello there, how are you today?",
		Priority: PriorityNormal, Metadata: []byte(`{"source":"web","tags":["a","b"]}`), SubmittedAt: time.Now()}.Encode()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeChat(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// Decoding the payload of the largest request by its tools (128 tools of
// a 64 KiB schema, 8.4 MB), as a worker does when the attempt starts.
func BenchmarkDecodeLargePayload(b *testing.B) {
	schema := `{"type":"object","properties":{"p":{"type":"string","description":"` + strings.Repeat("d", 64<<10-100) + `"}}}`
	p := ChatPayload{JobID: "j", Tenant: "t", SessionID: "s", Priority: PriorityNormal, SubmittedAt: time.Now(), Message: "hi", Params: &GenParams{}}
	for i := range 128 {
		p.Params.Tools = append(p.Params.Tools, Tool{Type: "function", Function: FunctionDef{Name: fmt.Sprintf("t%d", i), Parameters: json.RawMessage(schema)}})
	}
	raw, err := p.Encode()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeChat(raw); err != nil {
			b.Fatal(err)
		}
	}
}
