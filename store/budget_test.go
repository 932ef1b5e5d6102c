package store

import (
	"context"
	"testing"
	"time"
)

// A reservation is settled once against what the job cost, whether its
// ender settles it (twice, even) or dies first and leaves it to the sweep;
// a reservation whose job was never written is given back whole.
func TestBudgetReservationsSettleOnce(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	ttl := func(string) time.Duration { return time.Hour }
	reserve := func(id string, estimate int64) int {
		t.Helper()
		n, err := s.Reserve(ctx, "t", "2026-12-02", id, estimate, 100, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := reserve("job_00a", 60); n != Reserved {
		t.Fatalf("first reservation: %d", n)
	}
	if n := reserve("job_00a", 60); n != ReservedBy {
		t.Fatalf("the same job again: %d, want it found reserved", n)
	}
	if n := reserve("job_00b", 60); n != Reserved {
		t.Fatalf("second job under the limit: %d", n) // 60 < 100: admitted, may pass the limit by its cost
	}
	if n := reserve("job_00c", 1); n != Refused {
		t.Fatalf("a job with the budget reserved: %d, want refused", n)
	}
	for _, id := range []string{"job_00a", "job_00b"} {
		nj := NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now(), BudgetPeriod: "2026-12-02"}
		if _, _, err := s.Create(ctx, nj); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Finish(ctx, id, "t", id, 0, Outcome{Status: StatusSucceeded, Usage: &Usage{PromptTokens: 5, CompletionTokens: 15}, BudgetSpend: 20}); err != nil {
			t.Fatal(err)
		}
	}
	// job a's ender settles it, twice; job b's died first: the sweep does.
	for range 2 {
		if err := s.Settle(ctx, "job_00a", ttl); err != nil {
			t.Fatal(err)
		}
	}
	var claimed []string
	deadline := time.Now().Add(OutboxDelay + 5*time.Second)
	for len(claimed) == 0 && time.Now().Before(deadline) {
		ids, err := s.ClaimSettlements(ctx, 10, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		claimed = ids
		time.Sleep(100 * time.Millisecond)
	}
	if len(claimed) != 1 || claimed[0] != "job_00b" {
		t.Fatalf("the sweep claimed %v, want only the unsettled job_00b", claimed)
	}
	if err := s.Settle(ctx, "job_00b", ttl); err != nil {
		t.Fatal(err)
	}
	c, err := s.Budget(ctx, "t", "2026-12-02")
	if err != nil || c.Spent != 40 || c.Reserved != 0 {
		t.Fatalf("budget %+v (%v), want 40 spent and nothing reserved", c, err)
	}
	// A reservation given back (its job was not written) costs nothing.
	if n := reserve("job_00d", 30); n != Reserved {
		t.Fatalf("reservation after settling: %d", n)
	}
	if err := s.Unreserve(ctx, "t", "2026-12-02", "job_00d", time.Hour); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Budget(ctx, "t", "2026-12-02"); c.Spent != 40 || c.Reserved != 0 {
		t.Fatalf("budget %+v after a reservation was given back", c)
	}
}
