package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// logOf is a job's log as "type:delta" entries.
func logOf(t *testing.T, s *Store, id string) string {
	t.Helper()
	evs, err := s.Events(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("entry %d has seq %d", i, ev.Seq)
		}
		p, _ := ev.Decode()
		d := ""
		if tok, ok := p.(TokenEvent); ok {
			d = ":" + tok.Delta
		}
		out = append(out, ev.Type+d)
	}
	return strings.Join(out, " ")
}

// ahead publishes tokens of an attempt live, ahead of the log, from seq on.
func ahead(t *testing.T, s *Store, id string, fence int, seq int64, deltas ...string) {
	t.Helper()
	for i, d := range deltas {
		e, err := Entry(seq+int64(i), TokenEvent{Delta: d})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.PublishAhead(context.Background(), id, fence, 1, seq+int64(i), e, i == 0); err != nil {
			t.Fatal(err)
		}
	}
}

// What an attempt sent live ahead of the log goes into it, at the seqs the
// followers saw, before whatever is written next: the attempt's own sync,
// its finish, a cancel, a takeover. A fenced-out attempt's late live events
// never do. Reach counts them while they wait.
func TestEventsSentAheadGoInBeforeTheNextWrite(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	start := func(id string, lease time.Duration) Attempt {
		t.Helper()
		if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		a, err := s.StartAttempt(ctx, id, "t", id, id, "", false, lease)
		if err != nil || a.N != 1 {
			t.Fatalf("start %+v %v", a, err)
		}
		if _, err := s.AppendEvent(ctx, id, a.Fence, 1, TokenEvent{Delta: "a"}); err != nil {
			t.Fatal(err)
		}
		return a
	}
	want := func(id, log string) {
		t.Helper()
		if got := logOf(t, s, id); got != log {
			t.Fatalf("%s: the log holds %q, want %q", id, got, log)
		}
	}

	// A cancel: the followers saw b and c, and so does the log.
	a := start("job_cancel", time.Minute)
	ahead(t, s, "job_cancel", a.Fence, 2, "b", "c")
	if seq, final, err := s.Reach(ctx, "job_cancel"); err != nil || seq != 3 || final {
		t.Fatalf("reach while b and c wait: %d %v %v", seq, final, err)
	}
	if _, err := s.Finish(ctx, "job_cancel", "t", "job_cancel", 0, Outcome{Status: StatusCanceled, Error: &JobError{Code: "canceled"}}); err != nil {
		t.Fatal(err)
	}
	want("job_cancel", "token:a token:b token:c canceled")
	if seq, final, err := s.Reach(ctx, "job_cancel"); err != nil || seq != 4 || !final {
		t.Fatalf("reach after the cancel: %d %v %v", seq, final, err)
	}
	if n := s.rdb.Exists(ctx, rkeys.Ahead("job_cancel")).Val(); n != 0 {
		t.Fatal("the ahead hash outlived the job's end")
	}

	// The attempt's own sync: what went out ahead, then what did not.
	a = start("job_sync", time.Minute)
	ahead(t, s, "job_sync", a.Fence, 2, "b", "c")
	var entries []string
	for i, d := range []string{"b", "c", "d"} {
		e, _ := Entry(int64(i+2), TokenEvent{Delta: d})
		entries = append(entries, e)
	}
	if _, err := s.SyncEvents(ctx, "job_sync", a.Fence, 2, entries, false); err != nil {
		t.Fatal(err)
	}
	want("job_sync", "token:a token:b token:c token:d")
	if _, err := s.SyncEvents(ctx, "job_sync", a.Fence, 2, entries, false); err != nil { // sent again: nothing twice
		t.Fatal(err)
	}
	want("job_sync", "token:a token:b token:c token:d")
	if _, err := s.SyncEvents(ctx, "job_sync", a.Fence, 9, entries[:1], false); err == nil {
		t.Fatal("a sync that would leave a gap in the log was made")
	}

	// A takeover: the dead attempt's b goes in before the new attempt
	// writes; its late live event (it was paused, not dead) never does.
	a = start("job_taken", time.Millisecond)
	ahead(t, s, "job_taken", a.Fence, 2, "b")
	time.Sleep(5 * time.Millisecond)
	if ok, _, _, err := s.TakeOver(ctx, "job_taken", a.Fence, "job_taken:next"); err != nil || !ok {
		t.Fatalf("take over: %v %v", ok, err)
	}
	a2, err := s.StartAttempt(ctx, "job_taken", "t", "job_taken", "job_taken:next", "", false, time.Minute)
	if err != nil || a2.Fence <= a.Fence {
		t.Fatalf("the takeover's attempt: %+v %v", a2, err)
	}
	want("job_taken", "token:a token:b")
	ahead(t, s, "job_taken", a.Fence, 3, "stale")
	if _, err := s.AppendEvent(ctx, "job_taken", a2.Fence, 0, RetryEvent{Attempt: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendEvent(ctx, "job_taken", a2.Fence, 1, TokenEvent{Delta: "fresh"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SyncEvents(ctx, "job_taken", a.Fence, 3, entries[:1], false); err != ErrSuperseded {
		t.Fatalf("the fenced-out attempt's sync: %v, want ErrSuperseded", err)
	}
	want("job_taken", "token:a token:b retry token:fresh")
}
