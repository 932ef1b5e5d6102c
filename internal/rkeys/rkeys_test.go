package rkeys

import (
	"testing"
)

// The CRC16 of the Redis Cluster specification's example, and the rule that
// only the first {…} counts, an empty one not at all. The slots are what
// Redis 7.0's own CLUSTER KEYSLOT answers for these keys.
func TestSlotFollowsTheClusterSpec(t *testing.T) {
	for key, want := range map[string]int{
		"123456789":            0x31C3 % 16384, // 12739
		"{user1000}.following": 3443,           // the slot of "user1000"
		"foo{}{bar}":           8363,           // the whole key: {} is no tag
		"foo{{bar}}zap":        4015,           // the slot of "{bar"
	} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
}

// Every bucket's tag lies in the middle of its own share of the slot space.
func TestBucketTagsSpreadOverTheSlots(t *testing.T) {
	const width = 16384 / Buckets
	for i, tag := range bucketTags {
		if s := Slot(tag); s/width != i {
			t.Errorf("bucket %d: tag %q has slot %d, outside %d..%d", i, tag, s, i*width, (i+1)*width-1)
		}
	}
}

// A session's keys and its jobs' keys (with ids built for its bucket) share
// one slot, and so do the bucket's indexes.
func TestASessionAndItsJobsShareASlot(t *testing.T) {
	for _, s := range []string{"s1", "sess_42", "a much longer session id"} {
		b := SessionBucket("acme", s)
		id := "job_" + IDBucketChars(b) + "0123456789abcdefghjkmnpq"
		if Bucket(id) != b {
			t.Fatalf("Bucket(%q) = %d, want %d", id, Bucket(id), b)
		}
		want := Slot(SessionOrder("acme", s))
		for _, k := range []string{History("acme", s), Job(id), Events(id), LiveChannel(id), Leases(b), Unfinished(b)} {
			if Slot(k) != want {
				t.Errorf("%s: slot %d, want %d", k, Slot(k), want)
			}
		}
		if got, ok := JobIDOfChannel(LiveChannel(id)); !ok || got != id {
			t.Errorf("JobIDOfChannel(LiveChannel(%q)) = %q, %v", id, got, ok)
		}
	}
	if _, ok := JobIDOfChannel("chatfleet:{x}:job::live"); ok {
		t.Error("a channel without a job id parsed")
	}
}
