package api

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// A stream renewed at its heartbeats keeps counting against the cap past
// any number of leases: the set of stream leases does not expire under it.
func TestStreamCapCountsLongStreams(t *testing.T) {
	c := &streamCap{rdb: testkit.StartRedis(t).Client(), max: 1, lease: 100 * time.Millisecond}
	ctx := context.Background()
	renew, release, err := c.acquire(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	for range 15 { // five leases, renewed every third of one, as heartbeats do
		time.Sleep(c.lease / 3)
		renew()
	}
	if _, _, err := c.acquire(ctx, "t"); !errors.Is(err, errTooManyStreams) {
		t.Fatalf("a second stream after five leases of the first: %v, want too_many_streams", err)
	}
	release()
	if _, rel, err := c.acquire(ctx, "t"); err != nil {
		t.Fatalf("after the first stream ended: %v", err)
	} else {
		rel()
	}
}
