package tasks

import (
	"bytes"
	"errors"
	"testing"
)

// A payload either decodes to something that re-encodes and decodes to the
// same, or fails as ErrBadPayload (never retried) or ErrNewerPayload (left
// for a later release); never a panic.
func FuzzDecodeChat(f *testing.F) {
	f.Add([]byte(`{"v":1,"job_id":"job_a","tenant":"t","session_id":"s","message":"m","priority":"normal","submitted_at":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":1,"job_id":"job_a","tenant":"t","session_id":"s","message":"m","priority":"low","metadata":{"k":[1,2]},"submitted_at":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":2}`))
	f.Add([]byte(`{"v":1,"job_id":5}`))
	f.Add([]byte{0xff, 0x00})
	f.Fuzz(func(t *testing.T, raw []byte) {
		p, err := DecodeChat(raw)
		if err != nil {
			if !errors.Is(err, ErrBadPayload) && !errors.Is(err, ErrNewerPayload) {
				t.Fatalf("error %v wraps neither ErrBadPayload nor ErrNewerPayload", err)
			}
			return
		}
		again, err := p.Encode()
		if err != nil {
			t.Fatal(err)
		}
		q, err := DecodeChat(again)
		if err != nil {
			t.Fatalf("re-encoded payload does not decode: %v", err)
		}
		b1, _ := p.Encode()
		b2, _ := q.Encode()
		if !bytes.Equal(b1, b2) {
			t.Fatalf("round trip changed the payload:\n%s\n%s", b1, b2)
		}
	})
}
