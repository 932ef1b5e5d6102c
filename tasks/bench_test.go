package tasks

import (
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
