package llm

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/sony/gobreaker/v2"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// switchable is a provider whose health the test sets; a healthy call blocks
// until the gate opens, so that the test can hold a probe in flight.
type switchable struct {
	calls   atomic.Int32
	failing atomic.Bool
	gate    chan struct{}
}

func (s *switchable) Name() string { return "up" }

func (s *switchable) Stream(ctx context.Context, _ Request, _ func(Delta) error) (Reply, error) {
	s.calls.Add(1)
	if s.failing.Load() {
		return Reply{}, &Error{Provider: "up", Status: 503, Retryable: true, Msg: "down"}
	}
	select {
	case <-s.gate:
	case <-ctx.Done():
		return Reply{}, ctx.Err()
	}
	return Reply{Content: "ok"}, nil
}

func (g *Guarded) stateNow() gobreaker.State {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.effectiveLocked(time.Now())
}

// Two Guarded wrappers on one Redis stand for two worker processes.
func TestBreakerIsSharedByTheFleet(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	up := &switchable{gate: make(chan struct{})}
	up.failing.Store(true)
	// Open for 3 s: the checks while it is open must not race its end on a
	// loaded machine (waitFor allows 5 s for the wait that follows).
	set := BreakerSettings{Failures: 3, OpenFor: 3 * time.Second, Refresh: 20 * time.Millisecond}
	var workers []*Guarded
	for range 2 {
		g, err := NewGuarded(ctx, up, rdb, set, nil, zerolog.New(io.Discard))
		if err != nil {
			t.Fatal(err)
		}
		workers = append(workers, g)
	}
	w1, w2 := workers[0], workers[1]

	// Consecutive failures add up across processes: 2 + 1 opens it.
	for _, g := range []*Guarded{w1, w1, w2} {
		if _, err := g.Stream(ctx, Request{}, func(Delta) error { return nil }); err == nil {
			t.Fatal("a failing call succeeded")
		}
	}
	// Both see it on their next call: with failures known, a call reads the
	// fleet's state rather than wait for the announcement.
	var open *ErrOpen
	for _, g := range workers {
		if _, err := g.Stream(ctx, Request{}, nil); !errors.As(err, &open) {
			t.Fatalf("after 3 failures: %v, want ErrOpen", err)
		}
	}
	if n := up.calls.Load(); n != 3 {
		t.Fatalf("the upstream saw %d calls, want 3", n)
	}
	// The background refresh alone shows the state (no call needed).
	waitFor(t, func() bool { return w2.stateNow() == gobreaker.StateOpen }, "w2 to see the breaker open")

	// After the open period exactly one probe goes through, fleet-wide.
	up.failing.Store(false)
	waitFor(t, func() bool {
		return w1.stateNow() == gobreaker.StateHalfOpen && w2.stateNow() == gobreaker.StateHalfOpen
	}, "half-open")
	var wg sync.WaitGroup
	var rejected atomic.Int32
	probeDone := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := w1.Stream(ctx, Request{}, nil)
		probeDone <- err
	}()
	waitFor(t, func() bool { return up.calls.Load() == 4 }, "the probe to reach the upstream")
	var others sync.WaitGroup
	for i := range 10 {
		others.Add(1)
		go func() {
			defer others.Done()
			if _, err := workers[i%2].Stream(ctx, Request{}, nil); errors.As(err, new(*ErrOpen)) {
				rejected.Add(1)
			}
		}()
	}
	others.Wait() // they return while the probe is still held: rejected, not queued behind it
	if n := rejected.Load(); n != 10 || up.calls.Load() != 4 {
		t.Fatalf("while the probe was in flight: %d of 10 rejected, upstream calls %d (want 10, 4)", n, up.calls.Load())
	}
	close(up.gate)
	wg.Wait()
	if err := <-probeDone; err != nil {
		t.Fatalf("probe: %v", err)
	}
	// The probe's success closes it for everyone.
	waitFor(t, func() bool { return w1.stateNow() == gobreaker.StateClosed && w2.stateNow() == gobreaker.StateClosed }, "closed everywhere")
	if _, err := w2.Stream(ctx, Request{}, nil); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	states, err := BreakerStates(ctx, rdb, []string{"up"})
	if err != nil || states["up"] != "closed" {
		t.Fatalf("BreakerStates: %v %v", states, err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stalling sends `tokens` deltas 10 ms apart, then nothing until its call ends.
type stalling struct{ tokens int }

func (s stalling) Name() string { return "stalling" }

func (s stalling) Stream(ctx context.Context, _ Request, onDelta func(Delta) error) (Reply, error) {
	for range s.tokens {
		time.Sleep(10 * time.Millisecond)
		if err := onDelta(Delta{Text: "x "}); err != nil {
			return Reply{}, err
		}
	}
	<-ctx.Done()
	return Reply{}, ctx.Err()
}

// The idle timeout cuts a reply that stalls after its first tokens, however
// many came before (one timer, reset at each token), and says so; the
// first-token timeout cuts a silent one.
func TestTimeoutsCutStalledCalls(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	ctx := context.Background()
	for _, tc := range []struct {
		tokens      int
		afterOutput bool
		msg         string
	}{{30, true, "no token for 100ms mid-reply"}, {0, false, "no first token within 150ms"}} {
		g, err := NewGuarded(ctx, stalling{tc.tokens}, rdb, BreakerSettings{Failures: 100, OpenFor: time.Second}, nil, zerolog.New(io.Discard))
		if err != nil {
			t.Fatal(err)
		}
		g.timeouts = Timeouts{FirstToken: 150 * time.Millisecond, Idle: 100 * time.Millisecond}
		got := 0
		_, err = g.Stream(ctx, Request{}, func(Delta) error { got++; return nil })
		var pe *Error
		if !errors.As(err, &pe) || !pe.Timeout || !pe.Retryable || pe.AfterOutput != tc.afterOutput || pe.Msg != tc.msg {
			t.Errorf("%d tokens then silence: %#v", tc.tokens, err)
		}
		if got != tc.tokens { // a steady stream is never cut, however long
			t.Errorf("%d of %d tokens arrived before the cut", got, tc.tokens)
		}
	}
}

// With the periodic refresh out of the way (an hour), the announcement alone
// carries a trip and a recovery to the other process, whose calls then read
// nothing from Redis.
func TestBreakerChangesAreAnnounced(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	up := &switchable{gate: make(chan struct{})}
	close(up.gate)
	up.failing.Store(true)
	set := BreakerSettings{Failures: 2, OpenFor: 2 * time.Second, Refresh: time.Hour} // long enough to be seen open
	w1, err := NewGuarded(ctx, up, rdb, set, nil, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	w2, err := NewGuarded(ctx, up, rdb, set, nil, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return w1.watching.Load() && w2.watching.Load() }, "both to watch the announcements")
	for range 2 {
		_, _ = w2.Stream(ctx, Request{}, nil)
	}
	waitFor(t, func() bool { return w1.stateNow() == gobreaker.StateOpen }, "w1 to hear of the trip")

	up.failing.Store(false)
	waitFor(t, func() bool { return w2.stateNow() == gobreaker.StateHalfOpen }, "the open period to end")
	if _, err := w2.Stream(ctx, Request{}, nil); err != nil { // the probe, which closes it
		t.Fatalf("probe: %v", err)
	}
	waitFor(t, func() bool { return w1.stateNow() == gobreaker.StateClosed }, "w1 to hear of the recovery")
	if _, err := w1.Stream(ctx, Request{}, nil); err != nil {
		t.Fatalf("w1 after the recovery: %v", err)
	}
}

// A probe that outlives its claim (the claim expires after the open period)
// does not delete the claim of the probe that came after it: the fleet
// keeps one probe at a time.
func TestProbeReleasesOnlyItsOwnClaim(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	up := &switchable{gate: make(chan struct{})}
	up.failing.Store(true)
	set := BreakerSettings{Failures: 1, OpenFor: 200 * time.Millisecond, Refresh: 20 * time.Millisecond}
	g, err := NewGuarded(ctx, up, rdb, set, nil, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Stream(ctx, Request{}, nil); err == nil {
		t.Fatal("a failing call succeeded")
	}
	up.failing.Store(false)
	waitFor(t, func() bool { return g.stateNow() == gobreaker.StateHalfOpen }, "half-open")
	done := make(chan error, 1)
	go func() { _, err := g.Stream(ctx, Request{}, nil); done <- err }()
	waitFor(t, func() bool { return up.calls.Load() == 2 }, "the probe to reach the upstream")
	// Its claim expires and another worker's probe claims the key.
	key := rkeys.BreakerProbe(g.Name())
	if err := rdb.Set(ctx, key, "another-probe", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	close(up.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v, err := rdb.Get(ctx, key).Result(); err != nil || v != "another-probe" {
		t.Fatalf("the first probe released the second's claim: %q %v", v, err)
	}
}

// Failures recorded at once by several processes all count: the shared
// count is not read before the lock and written back over another's.
func TestSimultaneousFailuresAllCount(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	up := &switchable{gate: make(chan struct{})}
	up.failing.Store(true)
	set := BreakerSettings{Failures: 1000, OpenFor: time.Minute, Refresh: time.Hour}
	const procs, each = 4, 10
	var wg sync.WaitGroup
	var last *Guarded
	for range procs {
		g, err := NewGuarded(ctx, up, rdb, set, nil, zerolog.New(io.Discard))
		if err != nil {
			t.Fatal(err)
		}
		last = g
		for range each {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = g.Stream(ctx, Request{}, func(Delta) error { return nil })
			}()
		}
	}
	wg.Wait()
	last.refresh()
	last.mu.Lock()
	got := last.failures
	last.mu.Unlock()
	if got != procs*each {
		t.Fatalf("the fleet counted %d of %d failures", got, procs*each)
	}
}
