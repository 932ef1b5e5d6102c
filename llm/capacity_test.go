package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/tasks"
)

func newCap(t *testing.T, rdb redis.UniversalClient, lim Limits, set CapacitySettings) *capacity {
	t.Helper()
	return newCapacity("p", rdb, lim, set, NewMetrics(nil, nil), zerolog.New(io.Discard))
}

// take acquires with an inline budget; it fails the test on anything but
// success or a *CapacityError.
func take(t *testing.T, c *capacity, cost int, high bool, budget time.Duration) (*slot, *CapacityError) {
	t.Helper()
	s, err := c.acquire(context.Background(), cost, high, &budget)
	var ce *CapacityError
	if err != nil && !errors.As(err, &ce) {
		t.Fatalf("acquire: %v", err)
	}
	return s, ce
}

func TestConcurrencyIsFleetWideAndLeased(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	lim := Limits{Concurrency: 2}
	a, b := newCap(t, rdb, lim, CapacitySettings{}), newCap(t, rdb, lim, CapacitySettings{Lease: 300 * time.Millisecond})
	s1, _ := take(t, a, 1, false, 0)
	s2, _ := take(t, b, 1, false, 0)
	if s1 == nil || s2 == nil {
		t.Fatal("two slots of two were refused")
	}
	if _, ce := take(t, a, 1, false, 50*time.Millisecond); ce == nil || ce.Reason != "concurrency" {
		t.Fatalf("a third call got a slot: %v", ce)
	}
	s1.release(context.Background(), 0, true)
	if s, _ := take(t, a, 1, false, 0); s == nil {
		t.Fatal("a released slot was not given again")
	}
	// b "dies" holding s2: its renewal stops and its lease runs out.
	s2.stop()
	if s, ce := take(t, a, 1, false, 2*time.Second); s == nil {
		t.Fatalf("a dead worker's slot never came back: %v", ce)
	}
}

// Requests are counted in windows of a second: 120 a minute is two in any
// second, the third call waits until a second after the first.
func TestRequestsPerMinute(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	c := newCap(t, rdb, Limits{RPM: 120}, CapacitySettings{})
	first := time.Now()
	for i := range 2 {
		if s, _ := take(t, c, 1, false, 0); s == nil {
			t.Fatalf("call %d of the window's two waited", i+1)
		}
	}
	_, ce := take(t, c, 1, false, 100*time.Millisecond)
	if ce == nil || ce.Reason != "rpm" || ce.Until.Sub(first) < 950*time.Millisecond {
		t.Fatalf("the third call within the first second: %+v", ce)
	}
	if s, ce := take(t, c, 1, false, 2*time.Second); s == nil {
		t.Fatalf("the third call within its budget: %v", ce)
	}
}

// The margin stretches the window: 120 a minute less 5 % is two calls per
// 1.053 s, so no one-second window of the provider can see a third.
func TestTheMarginKeepsUnderTheRate(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	c := newCap(t, rdb, Limits{RPM: 120}, CapacitySettings{Margin: 0.05})
	first := time.Now()
	for i := range 2 {
		if s, _ := take(t, c, 1, false, 0); s == nil {
			t.Fatalf("call %d of the window's two waited", i+1)
		}
	}
	_, ce := take(t, c, 1, false, 0)
	if ce == nil || ce.Reason != "rpm" || ce.Until.Sub(first) < 1050*time.Millisecond {
		t.Fatalf("the third call inside the stretched window: %+v", ce)
	}
}

func TestTokensPerMinuteSettleWithUsage(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	c := newCap(t, rdb, Limits{TPM: 6000}, CapacitySettings{}) // 100 a second
	s, _ := take(t, c, 1000, false, 0)                         // larger than the burst: allowed when the bucket is full
	if s == nil {
		t.Fatal("a full bucket refused one large call")
	}
	if _, ce := take(t, c, 1000, false, 0); ce == nil || ce.Reason != "tpm" {
		t.Fatalf("a second large call right away: %v", ce)
	}
	s.release(context.Background(), 10, true)        // it used 10 of the 1000 estimated
	if s, ce := take(t, c, 30, false, 0); s == nil { // 40 of the burst of 50 are left
		t.Fatalf("the unused estimate was not given back: %v", ce)
	}
}

func TestRateLimitedPausesTheFleetAndHalvesTheLearnedLimit(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	c := newCap(t, rdb, Limits{}, CapacitySettings{}) // no limits: concurrency is learned
	var held []*slot
	for range 4 {
		s, _ := take(t, c, 1, false, 0)
		held = append(held, s)
	}
	held[0].rateLimited(context.Background(), 300*time.Millisecond) // 4 in flight when it came
	limit, _ := rdb.HGet(context.Background(), rkeys.ProviderAdaptive("p"), "limit").Int()
	if limit != 2 {
		t.Fatalf("learned limit %d, want 2 (half of 4 in flight)", limit)
	}
	if _, ce := take(t, c, 1, false, 0); ce == nil || ce.Reason != "paused" {
		t.Fatalf("during the pause: %v", ce)
	}
	held[1].rateLimited(context.Background(), 300*time.Millisecond) // the same burst: no second halving
	if l, _ := rdb.HGet(context.Background(), rkeys.ProviderAdaptive("p"), "limit").Int(); l != 2 {
		t.Fatalf("a second 429 of the same burst changed the limit to %d", l)
	}
	held[2].release(context.Background(), 0, true)
	held[3].release(context.Background(), 0, true)
	s, ce := take(t, c, 1, false, 2*time.Second) // waits out the pause in place
	if s == nil {
		t.Fatalf("after the pause: %v", ce)
	}
	s.release(context.Background(), 0, true) // a success raises the limit by 1/limit
	if l, _ := rdb.HGet(context.Background(), rkeys.ProviderAdaptive("p"), "limit").Float64(); l <= 2 {
		t.Fatalf("limit after a success %v, want above 2", l)
	}
}

func TestHighPriorityGoesFirst(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	c := newCap(t, rdb, Limits{Concurrency: 1}, CapacitySettings{})
	s, _ := take(t, c, 1, false, 0)
	if _, ce := take(t, c, 1, true, 0); ce == nil { // a high-priority call now waits
		t.Fatal("two calls in one slot")
	}
	s.release(context.Background(), 0, true)
	if _, ce := take(t, c, 1, false, 0); ce == nil || ce.Reason != "priority" {
		t.Fatalf("a normal call took the slot a high one waits for: %v", ce)
	}
	if s, ce := take(t, c, 1, true, 0); s == nil {
		t.Fatalf("the high-priority call: %v", ce)
	}
}

// The token estimate made before a call counts what the call will bill:
// tool schemas, the calls and results in the conversation, a response
// schema and each image.
func TestEstimateCountsToolsAndImages(t *testing.T) {
	plain := Request{Messages: []Message{{Role: "user", Content: "hello there"}}, Params: Params{MaxTokens: 10}}
	base := estimateCost(plain)
	schema := json.RawMessage(`{"type":"object","properties":{"city":{"type":"string","description":"` + strings.Repeat("x", 400) + `"}}}`)
	withTools := plain
	withTools.Params.Tools = []Tool{{Type: "function", Function: tasks.FunctionDef{Name: "weather", Parameters: schema}}}
	withImage := plain
	withImage.Messages = []Message{{Role: "user", Content: "hello there", Parts: []ContentPart{{Type: "text", Text: "hello there"}, {Type: "image_url", ImageURL: "https://example.com/a.png"}}}}
	withSchema := plain
	withSchema.Params.ResponseFormat = &tasks.ResponseFormat{Type: "json_schema", JSONSchema: &tasks.JSONSchema{Name: "x", Schema: schema}}
	if got := estimateCost(withTools) - base; got < len(schema)/4 {
		t.Fatalf("tool schema of %d bytes added %d tokens", len(schema), got)
	}
	if got := estimateCost(withImage) - base; got != imageTokens {
		t.Fatalf("an image added %d tokens, want %d", got, imageTokens)
	}
	if got := estimateCost(withSchema) - base; got < len(schema)/4 {
		t.Fatalf("a response schema of %d bytes added %d tokens", len(schema), got)
	}
}

// panicking panics in the middle of its reply, as a provider bug or a token
// callback might.
type panicking struct{}

func (panicking) Name() string { return "panicking" }
func (panicking) Stream(_ context.Context, _ Request, onDelta func(Delta) error) (Reply, error) {
	_ = onDelta(Delta{Text: "half"})
	panic("provider bug")
}

// A call that panics (recovered further up, as the worker's middleware
// does) frees its concurrency slot: the next call gets it at once.
func TestPanickingCallFreesItsSlot(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, err := NewGuarded(ctx, panicking{}, rdb, BreakerSettings{Failures: 100, OpenFor: time.Second}, nil, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	g.cap = newCap(t, rdb, Limits{Concurrency: 1}, CapacitySettings{MaxInlineWait: 50 * time.Millisecond})
	call := func() (err error, panicked bool) {
		defer func() {
			if recover() != nil {
				panicked = true
			}
		}()
		_, err = g.Stream(ctx, Request{}, func(Delta) error { return nil })
		return err, false
	}
	if _, panicked := call(); !panicked {
		t.Fatal("the provider's panic should reach the caller")
	}
	if err, panicked := call(); !panicked {
		t.Fatalf("the second call did not get the slot: %v", err)
	}
}

// A near miss at a configured rate (a 429 with Retry-After of a second)
// lowers the effective rate by a fifth and pauses the fleet only until the
// next request that rate allows, not the whole second; successes bring the
// rate back up to its ceiling by a fiftieth of it each.
func TestANearMissLowersTheRateInsteadOfPausingASecond(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	ctx := context.Background()
	c := newCap(t, rdb, Limits{RPM: 600}, CapacitySettings{}) // one request every 100 ms
	// The pause's end is read as Redis's own clock sets it (PEXPIRETIME)
	// against Redis's clock before and after the 429, so a slow machine
	// cannot move it. Only a stall longer than the pause itself, which lets
	// the key expire before it is read, makes a try inconclusive.
	pauseEnd := func(retryAfter time.Duration) (before, end, after int64) {
		s, _ := take(t, c, 1, false, time.Second)
		before = rdb.Time(ctx).Val().UnixMilli()
		s.rateLimited(ctx, retryAfter)
		end = rdb.PExpireTime(ctx, rkeys.ProviderPause("p")).Val().Milliseconds()
		after = rdb.Time(ctx).Val().UnixMilli()
		return before, end, after
	}
	var before, end, after int64
	for try := 0; ; try++ {
		rdb.Del(ctx, rkeys.ProviderPause("p"), rkeys.ProviderAdaptive("p"))
		if before, end, after = pauseEnd(time.Second); end > 0 || try == 4 {
			break
		}
	}
	if end < before+125 || end > after+125+1 {
		t.Fatalf("a near miss paused the provider until %d ms after the 429 (%d ms until the answer), want the next request's spacing at the lowered rate (125 ms)",
			end-before, after-before)
	}
	if rpm, _ := rdb.HGet(ctx, rkeys.ProviderAdaptive("p"), "rpm").Float64(); rpm != 480 {
		t.Fatalf("effective rate after a 429: %v, want 480", rpm)
	}
	// The provider means it: the pause is kept.
	if before, end, _ = pauseEnd(3 * time.Second); end < before+3000 {
		t.Fatalf("a 3 s Retry-After paused the provider for %d ms", end-before)
	}
	if rpm, _ := rdb.HGet(ctx, rkeys.ProviderAdaptive("p"), "rpm").Float64(); rpm != 480 {
		t.Fatalf("two 429s within a second lowered the rate twice: %v", rpm)
	}
	rdb.Del(ctx, rkeys.ProviderPause("p"))
	for range 10 {
		s, _ := take(t, c, 1, false, time.Second)
		s.release(ctx, 0, true)
	}
	if n, _ := rdb.HExists(ctx, rkeys.ProviderAdaptive("p"), "rpm").Result(); n {
		t.Fatal("ten successes did not bring the rate back to its ceiling (480 + 10 × 12)")
	}
}

// Two processes whose clocks are two minutes apart share one request window:
// the window is kept on Redis's clock, so neither the one ahead (which would
// see the other's calls as long past) nor the one behind (which would wait
// for calls two minutes in its future) gets the window wrong.
func TestTheRequestWindowFollowsRedissClock(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	lim := Limits{RPM: 60} // one call a second
	ahead, behind := newCap(t, rdb, lim, CapacitySettings{}), newCap(t, rdb, lim, CapacitySettings{})
	ahead.now = func() time.Time { return time.Now().Add(time.Minute) }
	behind.now = func() time.Time { return time.Now().Add(-time.Minute) }
	for _, order := range [][2]*capacity{{behind, ahead}, {ahead, behind}} {
		first, second := order[0], order[1]
		rdb.FlushDB(context.Background())
		if s, ce := take(t, first, 1, false, 0); s == nil {
			t.Fatalf("the window's first call waited: %v", ce)
		}
		_, ce := take(t, second, 1, false, 0)
		if ce == nil || ce.Reason != "rpm" {
			t.Fatalf("a second call went in a one-call window (the other process's clock %s off): %v", second.now().Sub(first.now()), ce)
		}
		if wait := ce.Until.Sub(second.now()); wait > 2*time.Second {
			t.Fatalf("the second call was told to wait %s, want the rest of the window's second", wait)
		}
	}
}

// cancelReserved starts a call of cost that must reserve a later place
// (reserved tells when it has), then cancels it while it sleeps.
func cancelReserved(t *testing.T, c *capacity, cost int, reserved func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		budget := 5 * time.Second
		_, err := c.acquire(ctx, cost, false, &budget)
		done <- err
	}()
	for !reserved() {
		select {
		case err := <-done:
			t.Fatalf("the second call returned before it reserved: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancelled call: %v", err)
	}
}

// A call that reserved its place in the request window and was cancelled
// before it went gives the place back: the window counts only the call sent.
func TestACancelledReservationLeavesTheWindow(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	c := newCap(t, rdb, Limits{RPM: 60}, CapacitySettings{}) // one call a second
	if s, ce := take(t, c, 1, false, 0); s == nil {
		t.Fatalf("the window's first call waited: %v", ce)
	}
	// The second call reserves the next second's place, then sleeps until it.
	cancelReserved(t, c, 1, func() bool { return rdb.ZCard(context.Background(), rkeys.ProviderRequests("p")).Val() >= 2 })
	if n := rdb.ZCard(context.Background(), rkeys.ProviderRequests("p")).Val(); n != 1 {
		t.Fatalf("the request window holds %d calls after the reservation was cancelled, want the 1 sent", n)
	}
	if n := rdb.ZCard(context.Background(), rkeys.ProviderLeases("p")).Val(); n != 1 {
		t.Fatalf("%d slots held after the reservation was cancelled, want the 1 sent", n)
	}
}

// A call that reserved its tokens and was cancelled before it went gives
// them back: the token bucket holds only the call sent.
func TestACancelledReservationGivesItsTokensBack(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	c := newCap(t, rdb, Limits{TPM: 6000}, CapacitySettings{}) // 100 tokens a second, 50 at once
	tat := func() float64 { v, _ := rdb.Get(context.Background(), rkeys.ProviderTPM("p")).Float64(); return v }
	if s, ce := take(t, c, 50, false, 0); s == nil {
		t.Fatalf("the first call waited: %v", ce)
	}
	sent := tat()
	// The second call reserves its 50 tokens (half a second on), then sleeps.
	cancelReserved(t, c, 50, func() bool { return tat() > sent })
	if got := tat(); math.Abs(got-sent) > 1 {
		t.Fatalf("the bucket is full again at %.0f after the cancel, want %.0f as after the one call sent", got, sent)
	}
}

// lockedBuffer is a log sink that the limiter's goroutines may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(l.b.String()), "\n")
}

// counterValue reads one series of a counter from reg (-1: absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name, provider string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "provider" && l.GetValue() == provider {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

// A Redis that refuses the limiter's scripts (here a read-only replica, as
// the old primary is during a failover) does not stop the calls: the limiter
// fails open, counts each call that went ahead without the quota, and logs
// it once a minute at most. (Out of memory under noeviction does not stop
// these scripts: their first write removes, which Redis allows, and a script
// that has written may go on.)
func TestLimiterErrorsAreCountedAndTheCallsGoAhead(t *testing.T) {
	primary := testkit.StartRedis(t, testkit.WithArgs("--repl-diskless-sync-delay", "0"))
	rdb := testkit.StartRedis(t).Client()
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	logs := &lockedBuffer{}
	c := newCapacity("p", rdb, Limits{RPM: 60, Concurrency: 1}, CapacitySettings{}, NewMetrics(reg, []Spec{{Kind: "p"}}), zerolog.New(logs))
	if v := counterValue(t, reg, "chatfleet_llm_limiter_errors_total", "p"); v != 0 {
		t.Fatalf("before any error the counter is %v, want a series at 0", v)
	}
	if err := rdb.SlaveOf(ctx, "127.0.0.1", strconv.Itoa(primary.Port)).Err(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(rdb.Info(ctx, "replication").Val(), "master_link_status:up") {
		time.Sleep(10 * time.Millisecond)
	}
	// One call a second and one at a time: three at once go only because
	// the limiter fails open.
	var held []*slot
	for i := range 3 {
		s, ce := take(t, c, 1, false, 0)
		if s == nil {
			t.Fatalf("call %d waited while the limiter failed: %v", i+1, ce)
		}
		held = append(held, s)
	}
	if v := counterValue(t, reg, "chatfleet_llm_limiter_errors_total", "p"); v != 3 {
		t.Fatalf("chatfleet_llm_limiter_errors_total{provider=\"p\"} = %v after 3 calls without the quota, want 3", v)
	}
	for _, s := range held {
		s.release(ctx, 0, true)
	}
	lines := logs.lines()
	if len(lines) != 1 || !strings.Contains(lines[0], `"provider":"p"`) || !strings.Contains(lines[0], "READONLY") {
		t.Fatalf("the limiter's errors logged %d lines, want 1 naming the provider and the error: %q", len(lines), lines)
	}
	// A minute later the next error is logged again, with the count since
	// the first line: two acquires, three releases and this acquire.
	c.now = func() time.Time { return time.Now().Add(logEvery) }
	if s, _ := take(t, c, 1, false, 0); s == nil {
		t.Fatal("a call waited while the limiter failed")
	}
	if lines := logs.lines(); len(lines) != 2 || !strings.Contains(lines[1], `"errors":6`) {
		t.Fatalf("a minute on, the log has %q, want a second line counting the 6 errors since the first", lines)
	}
	if v := counterValue(t, reg, "chatfleet_llm_limiter_errors_total", "p"); v != 4 {
		t.Fatalf("chatfleet_llm_limiter_errors_total{provider=\"p\"} = %v after 4 calls without the quota, want 4", v)
	}
}
