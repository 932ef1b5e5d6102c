package stream

import (
	"context"
	"testing"
	"time"
)

// One delta into the coalescing buffer, flushed to Redis every 256 bytes (the
// default batch size): the cost per token the worker pays.
func BenchmarkEmitterDelta(b *testing.B) {
	st := newStore(b)
	activeJob(b, st, "job_bench")
	e := NewEmitter(context.Background(), attemptOf(st, "job_bench", 1), Coalescing{Window: time.Hour, MaxBytes: 256})
	b.ReportAllocs()
	for b.Loop() {
		if err := e.Delta(" word"); err != nil {
			b.Fatal(err)
		}
	}
	_ = e.Flush()
}
