package tasks

import (
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
	p.Version = PayloadVersion
	if got.JobID != p.JobID || got.Message != p.Message || !got.SubmittedAt.Equal(p.SubmittedAt) ||
		string(got.Metadata) != `{"a":1}` || got.Version != PayloadVersion {
		t.Fatalf("got %+v want %+v", got, p)
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := map[string]string{
		"not json":        `\x00\x01garbage`,
		"no version":      `{"job_id":"j","tenant":"t","session_id":"s","message":"m","priority":"normal","submitted_at":"2026-01-01T00:00:00Z"}`,
		"unknown version": `{"v":99,"job_id":"j"}`,
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
	_, err := DecodeChat([]byte(`{"v":2}`))
	if err == nil || !strings.Contains(err.Error(), "unknown version 2") {
		t.Fatalf("version error should say which: %v", err)
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
