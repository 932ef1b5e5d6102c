package llm

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Limits are a provider's quota, enforced for the whole fleet; 0 means no
// limit of that kind. With no concurrency limit the fleet learns one from the
// provider's 429s (additive increase, multiplicative decrease).
type Limits struct {
	RPM         int // requests per minute
	TPM         int // tokens per minute (prompt + output cap estimated before, settled after)
	Concurrency int // calls in flight
}

// CapacitySettings tune how calls wait for a provider's capacity.
type CapacitySettings struct {
	// MaxInlineWait bounds how long one attempt waits in place for capacity;
	// longer waits hand the job back to the scheduler, which holds the model's
	// jobs until the capacity returns (default 100ms).
	MaxInlineWait time.Duration
	// MaxRetryDelay caps a provider's Retry-After (default 5m).
	MaxRetryDelay time.Duration
	// Lease is how long a call's slot outlives a worker that died holding it
	// (default 10s; renewed while the call runs).
	Lease time.Duration
	// Margin keeps the fleet this fraction under a configured rate (RPM,
	// TPM): a limit is a ceiling, and providers count at the edge of shorter
	// windows than a minute (default 0.05; 0 sends at exactly the limit).
	Margin float64
}

func (s *CapacitySettings) defaults() {
	if s.MaxInlineWait <= 0 {
		s.MaxInlineWait = 100 * time.Millisecond
	}
	if s.MaxRetryDelay <= 0 {
		s.MaxRetryDelay = 5 * time.Minute
	}
	if s.Lease <= 0 {
		s.Lease = 10 * time.Second
	}
	if s.Margin < 0 || s.Margin >= 1 {
		s.Margin = 0
	}
}

// under is a configured rate less the margin (at least 1; 0 stays 0).
func (s CapacitySettings) under(rate int) int {
	if rate <= 0 {
		return 0
	}
	return max(1, int(float64(rate)*(1-s.Margin)))
}

// CapacityError says a provider has no capacity for the call now: its quota
// is used up or it asked the fleet to wait. It is not a failure: the job
// waits (in the queue, without using an attempt) until Until.
type CapacityError struct {
	Provider string
	Until    time.Time
	Reason   string // paused, rpm, tpm, concurrency, priority
	// Every is how often the quota that binds lets a call through (a rate's
	// interval: 60 s / rpm for rpm, the call's share of a minute's tokens
	// for tpm; zero when no rate binds): the scheduler hands out the
	// model's jobs about this often while it probes.
	Every time.Duration
}

func (e *CapacityError) Error() string {
	return fmt.Sprintf("%s: at capacity (%s) until %s", e.Provider, e.Reason, e.Until.UTC().Format(time.RFC3339Nano))
}

// RateLimited reports whether a provider's answer is a capacity signal (429
// too many requests, 529 overloaded) rather than a health failure. A 429 for
// an exhausted account (insufficient_quota) will not pass by waiting: it is a
// failure like any other.
func RateLimited(err error) bool {
	var pe *Error
	if !errors.As(err, &pe) {
		return false
	}
	return (pe.Status == 429 && !strings.Contains(pe.Msg, "insufficient_quota")) || pe.Status == 529
}

// capacity enforces one provider's limits through Redis, for every worker at
// once. A call costs two round trips: acquire (pause, priority, concurrency,
// both rates, in one script) and release (or rateLimited).
//
// A configured rate is a ceiling: the fleet sends at the margin under it
// (ceil). Its requests are counted in a sliding window a little longer than
// a second, each holding at most the configured quota's share of a second:
// no one-second window of a strict provider sees more than it allows, even
// with the jitter of the calls' way there, and a burst after a quiet spell
// still goes at once (as far as the concurrency limit lets it). A 429 lowers the effective request rate
// (by a fifth, at most once a second), which then recovers by a fiftieth of
// the ceiling per success.
type capacity struct {
	name string
	rdb  redis.UniversalClient
	lim  Limits
	ceil Limits // the rates under the margin
	set  CapacitySettings
	m    *Metrics
	keys []string         // leases, requests, tpm, pause, adaptive, waiting, saturated
	now  func() time.Time // this process's clock (tests skew it)
	log  zerolog.Logger

	mu       sync.Mutex // guards the limiter errors' log
	loggedAt time.Time  // when the last line was logged
	unlogged int        // errors since (the next line reports them)
}

func newCapacity(name string, rdb redis.UniversalClient, lim Limits, set CapacitySettings, m *Metrics, log zerolog.Logger) *capacity {
	set.defaults()
	ceil := Limits{RPM: set.under(lim.RPM), TPM: set.under(lim.TPM), Concurrency: lim.Concurrency}
	c := &capacity{name: name, rdb: rdb, lim: lim, ceil: ceil, set: set, m: m, keys: []string{
		rkeys.ProviderLeases(name), rkeys.ProviderRequests(name), rkeys.ProviderTPM(name), rkeys.ProviderPause(name),
		rkeys.ProviderAdaptive(name), rkeys.ProviderWaiting(name), rkeys.ProviderSaturated(name),
	}, now: time.Now, log: log}
	m.limits(name, lim)
	m.effectiveRPM(name, ceil.RPM)
	return c
}

// adaptive: with no limits configured the fleet learns a concurrency limit
// from the provider's 429s, starting at initialLimit.
func (c *capacity) adaptive() bool { return c.lim == Limits{} }

// concurrencyRetry is how long a model whose deployments are all at their
// concurrency limit is held back before the scheduler tries it again.
const concurrencyRetry = 250 * time.Millisecond

// initialLimit is where a learned concurrency limit starts: it grows by one
// per success (doubling every round of calls) until the first 429.
const initialLimit = 16

// slot is one call's hold on the provider's capacity.
type slot struct {
	c     *capacity
	token string
	cost  int
	stop  context.CancelFunc
}

func newToken() string {
	b := make([]byte, 12)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// acquire waits for capacity for a call of cost tokens: in place while the
// wait fits in what is left of MaxInlineWait, else it returns a
// *CapacityError for the job to wait in the queue.
func (c *capacity) acquire(ctx context.Context, cost int, high bool, budget *time.Duration) (*slot, error) {
	start := c.now()
	token := newToken()
	poll := firstPoll(ctx)
	for {
		left := *budget - c.now().Sub(start)
		res, err := acquireScript.Run(ctx, c.rdb, c.keys, acquireArgs{Token: token, Lease: c.set.Lease.Milliseconds(),
			Concurrency: c.ceil.Concurrency, RPM: c.ceil.RPM, TPM: c.ceil.TPM, Cost: cost, High: high,
			MaxWait: max(left.Milliseconds(), 0), Adaptive: c.adaptive(), InitialLimit: initialLimit, ConfiguredRPM: c.lim.RPM}.argv()...).Slice()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// Fail open: without the script there is no fleet-wide quota to
			// keep, and a Redis outage (or a full, read-only or failing-over
			// one) must not stop every call of the fleet. The provider's own
			// 429s and the breaker still guard it; the counter and the log
			// say the quota is not kept.
			c.failed("acquire", err, true)
			return &slot{c: c, token: token, stop: func() {}}, nil
		}
		wait := time.Duration(res[1].(int64)) * time.Millisecond
		switch res[0].(int64) {
		case 2: // reserved: sleep until it is due, then go
			select {
			case <-ctx.Done():
				c.giveBack(context.WithoutCancel(ctx), token, cost)
				return nil, ctx.Err()
			case <-time.After(wait):
			}
			fallthrough
		case 1:
			waited := c.now().Sub(start)
			c.m.capacityWait(c.name, waited)
			capacityWaitSpan(ctx, c.name, start)
			*budget -= waited
			return c.hold(token, cost), nil
		}
		why, _ := res[2].(string)
		if wait < 0 { // a slot must free up: poll, backing off
			wait = poll
			poll = min(poll*2, 500*time.Millisecond)
		}
		wait += time.Duration(rand.Int64N(int64(wait/10) + 1)) // spread the herd
		if c.now().Sub(start)+wait > *budget {
			waited := c.now().Sub(start)
			c.m.capacityWait(c.name, waited)
			capacityWaitSpan(ctx, c.name, start)
			*budget -= waited
			until := c.now().Add(wait)
			if why == "concurrency" || why == "priority" {
				// A slot frees when a call ends, at no known time: the
				// scheduler holds the model's jobs this long, then hands
				// one out to try (one try per model, not per job).
				until = c.now().Add(concurrencyRetry)
			}
			return nil, &CapacityError{Provider: c.name, Until: until, Reason: why, Every: c.every(why, cost)}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// every is how often the quota that binds (why) lets a call of cost tokens
// through; zero when no rate binds.
func (c *capacity) every(why string, cost int) time.Duration {
	switch {
	case why == "rpm" && c.ceil.RPM > 0:
		return time.Minute / time.Duration(c.ceil.RPM)
	case why == "tpm" && c.ceil.TPM > 0:
		return time.Duration(float64(time.Minute) * float64(max(cost, 1)) / float64(c.ceil.TPM))
	}
	return 0
}

// hold renews the slot's lease while the call runs, so that it outlives a
// long generation but not a dead worker.
func (c *capacity) hold(token string, cost int) *slot {
	ctx, stop := context.WithCancel(context.Background())
	c.m.inflightAdd(c.name, 1)
	go func() {
		t := time.NewTicker(c.set.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := renewScript.Run(ctx, c.rdb, c.keys[:1], token, c.set.Lease.Milliseconds()).Err(); err != nil && ctx.Err() == nil {
					c.failed("renew", err, false)
				}
			}
		}
	}()
	return &slot{c: c, token: token, cost: cost, stop: func() { stop(); c.m.inflightAdd(c.name, -1) }}
}

// giveBack frees a reserved call of cost tokens that will not be made: its
// slot, its place in the request window and its tokens, which would
// otherwise be held for a call never sent until the window passes them.
func (c *capacity) giveBack(ctx context.Context, token string, cost int) {
	delta := 0
	if c.lim.TPM > 0 {
		delta = -cost
	}
	err := c.rdb.ZRem(ctx, c.keys[1], token).Err()
	if err == nil { // the slot and the tokens, as a call that ends unused
		err = releaseScript.Run(ctx, c.rdb, []string{c.keys[0], c.keys[2], c.keys[4]},
			releaseArgs{Token: token, TPM: c.ceil.TPM, Delta: delta, Adaptive: c.adaptive(), RPM: c.ceil.RPM}.argv()...).Err()
	}
	if err != nil {
		c.failed("give back", err, false)
	}
}

// logEvery is the least time between two log lines of a provider's limiter
// errors: when Redis fails, every call fails with it.
const logEvery = time.Minute

// failed notes a limiter script's error: counted when the call went ahead
// without the quota (unlimited), logged at most once per logEvery.
func (c *capacity) failed(op string, err error, unlimited bool) {
	if unlimited {
		c.m.limiterError(c.name)
	}
	c.mu.Lock()
	c.unlogged++
	now := c.now()
	if !c.loggedAt.IsZero() && now.Sub(c.loggedAt) < logEvery {
		c.mu.Unlock()
		return
	}
	n := c.unlogged
	c.loggedAt, c.unlogged = now, 0
	c.mu.Unlock()
	c.log.Error().Err(err).Str("provider", c.name).Str("op", op).Int("errors", n).
		Msg("provider limiter failed: calls go ahead without the fleet-wide quota")
}

// release frees the slot after a call that used `used` tokens.
func (s *slot) release(ctx context.Context, used int, success bool) {
	s.stop()
	c := s.c
	delta := 0
	if c.lim.TPM > 0 && used > 0 {
		delta = used - s.cost
	}
	res, err := releaseScript.Run(context.WithoutCancel(ctx), c.rdb, []string{c.keys[0], c.keys[2], c.keys[4]},
		releaseArgs{Token: s.token, TPM: c.ceil.TPM, Delta: delta, Adaptive: c.adaptive(), Success: success, RPM: c.ceil.RPM}.argv()...).Int64Slice()
	if err != nil {
		c.failed("release", err, false)
	}
	c.learned(res, err)
}

// learned shows what a script returned of the learned limits.
func (c *capacity) learned(res []int64, err error) {
	if err != nil || len(res) != 2 {
		return
	}
	if c.adaptive() {
		c.m.learned(c.name, int(res[0]))
	}
	if c.ceil.RPM > 0 {
		c.m.effectiveRPM(c.name, int(res[1]))
	}
}

// rateLimited records a 429 for the slot's call: the provider pauses for the
// whole fleet for retryAfter (1 s when it named none; capped).
func (s *slot) rateLimited(ctx context.Context, retryAfter time.Duration) {
	s.stop()
	c := s.c
	c.m.rateLimited(c.name)
	if retryAfter <= 0 {
		retryAfter = time.Second
	}
	retryAfter = min(retryAfter, c.set.MaxRetryDelay)
	res, err := rateLimitedScript.Run(context.WithoutCancel(ctx), c.rdb, []string{c.keys[0], c.keys[3], c.keys[4]},
		rateLimitedArgs{Token: s.token, Pause: retryAfter.Milliseconds(), Adaptive: c.adaptive(), RPM: c.ceil.RPM}.argv()...).Int64Slice()
	if err != nil {
		c.failed("rate limited", err, false)
	}
	c.learned(res, err)
}
