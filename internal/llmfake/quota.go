package llmfake

import (
	"sync"
	"time"
)

// quota is a provider's rate limit as providers enforce it: perSecond calls
// a second, counted in a bucket refilled continuously or, stricter at the
// edge, in a sliding one-second window; at most atOnce in flight; beyond
// either the call gets 429 with Retry-After: 1.
type quota struct {
	mu                  sync.Mutex
	perSecond, atOnce   int
	window              bool        // a sliding one-second window instead of a bucket
	admitted            []time.Time // the window's calls, oldest first
	tokens              float64
	last                time.Time
	inflight, maxFlight int
	served, rejected    int
}

func (q *quota) admit() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	full := false
	if q.window {
		for len(q.admitted) > 0 && now.Sub(q.admitted[0]) >= time.Second {
			q.admitted = q.admitted[1:]
		}
		full = len(q.admitted) >= q.perSecond
	} else {
		q.tokens = min(float64(q.perSecond), q.tokens+now.Sub(q.last).Seconds()*float64(q.perSecond))
		q.last = now
		full = q.tokens < 1
	}
	if full || q.inflight >= q.atOnce {
		q.rejected++
		return false
	}
	q.tokens--
	q.admitted = append(q.admitted, now)
	q.inflight++
	q.served++
	q.maxFlight = max(q.maxFlight, q.inflight)
	return true
}

func (q *quota) done() {
	q.mu.Lock()
	q.inflight--
	q.mu.Unlock()
}

// SetQuota turns on quota mode: perSecond calls a second (a bucket that
// refills continuously) and atOnce calls in flight; beyond either, 429 with
// Retry-After: 1.
func (f *Fake) SetQuota(perSecond, atOnce int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.quota = &quota{perSecond: perSecond, atOnce: atOnce, tokens: float64(perSecond), last: time.Now()}
}

// SetWindowQuota is SetQuota with the calls counted in a sliding one-second
// window (as providers that enforce a per-minute quota over shorter periods
// do): a burst at the window's edge gets 429s a bucket would have let through.
func (f *Fake) SetWindowQuota(perSecond, atOnce int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.quota = &quota{perSecond: perSecond, atOnce: atOnce, window: true}
}

// QuotaStats are the quota's counts: calls served, calls answered 429, and
// the most calls that were in flight at once.
func (f *Fake) QuotaStats() (served, rejected, maxInFlight int) {
	f.mu.Lock()
	q := f.quota
	f.mu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.served, q.rejected, q.maxFlight
}
