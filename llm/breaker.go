package llm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/tracing"
)

// BreakerSettings configures every provider's breaker.
type BreakerSettings struct {
	Failures int           // consecutive failures, fleet-wide, that open it
	OpenFor  time.Duration // how long it stays open before one probe is let through
	Refresh  time.Duration // how often a process re-reads the fleet's state (default 250ms)
}

// ErrOpen is returned, at once and without an upstream call, by a provider
// whose breaker is open (or half-open with another worker's probe in flight).
type ErrOpen struct {
	Provider string
	Until    time.Time // when it goes half-open
}

func (e *ErrOpen) Error() string { return e.Provider + ": circuit breaker open" }

// Guarded wraps a provider in a circuit breaker shared by the whole fleet:
// gobreaker's DistributedCircuitBreaker keeps its counts and state in Redis,
// so consecutive failures are counted across workers and a trip on one worker
// is a trip on all. Every change of the shared state is announced by pub/sub
// and re-read at once by every process, so that in steady state (closed, no
// failures) a call reads and writes nothing in Redis; once a failure is known,
// each call reads the state (one GET), as it does while the announcements'
// subscription is down. Each process also re-reads it every Refresh, a safety
// net that keeps its chatfleet_breaker_state gauge within a second of the
// fleet's.
type Guarded struct {
	Provider
	cap      *capacity // nil: no fleet-wide capacity control
	timeouts Timeouts
	model    string // the configured model: the bounded label of token metrics
	public   string // the public model it serves (models.Model)
	priced   string // the model its use is priced by (priceKey)
	kind     string // openai, anthropic or sim
	dcb      *gobreaker.DistributedCircuitBreaker[struct{}]
	store    *breakerStore
	rdb      redis.UniversalClient
	set      BreakerSettings
	log      zerolog.Logger
	metrics  *Metrics

	// watching is set while the subscription to the breaker's change
	// announcements stands: the copy is then current, and a call reads no
	// state from Redis.
	watching atomic.Bool

	mu       sync.Mutex
	state    gobreaker.State
	failures uint32 // consecutive, fleet-wide, as last read
	until    time.Time
}

// NewGuarded puts p behind its fleet-wide breaker and starts refreshing the
// shared state until ctx ends.
func NewGuarded(ctx context.Context, p Provider, rdb redis.UniversalClient, set BreakerSettings, m *Metrics, log zerolog.Logger) (*Guarded, error) {
	if set.Refresh <= 0 {
		set.Refresh = 250 * time.Millisecond
	}
	g := &Guarded{Provider: p, rdb: rdb, set: set, metrics: m, model: p.Name(),
		log: log.With().Str("provider", p.Name()).Logger(), store: newBreakerStore(rdb)}
	dcb, err := gobreaker.NewDistributedCircuitBreaker[struct{}](g.store, gobreaker.Settings{
		Name:        p.Name(),
		MaxRequests: 1,
		Timeout:     set.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= uint32(set.Failures) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			ev := g.log.Info()
			if to == gobreaker.StateOpen {
				ev = g.log.Warn()
			}
			ev.Str("from", from.String()).Str("to", to.String()).Msg("circuit breaker state changed")
		},
	})
	if err != nil {
		return nil, fmt.Errorf("breaker for %s: %w", p.Name(), err)
	}
	g.dcb = dcb
	g.refresh()
	go g.refreshLoop(ctx)
	go g.watch(ctx)
	return g, nil
}

func (g *Guarded) effectiveLocked(now time.Time) gobreaker.State {
	if g.state == gobreaker.StateOpen && !g.until.IsZero() && !now.Before(g.until) {
		return gobreaker.StateHalfOpen
	}
	return g.state
}

// Unsupported implements Carrier for the provider it guards.
func (g *Guarded) Unsupported(req Request) string {
	if c, ok := g.Provider.(Carrier); ok {
		return c.Unsupported(req)
	}
	return ""
}

// Stream implements Provider behind the breaker.
func (g *Guarded) Stream(ctx context.Context, req Request, onDelta func(Delta) error) (reply Reply, err error) {
	if tracing.Enabled() {
		var end func(Reply, error)
		ctx, onDelta, end = g.span(ctx, req, onDelta)
		defer func() { end(reply, err) }()
	}
	// Another worker may have tripped the breaker a moment ago. While all is
	// well (closed, no failures) every change is announced (watch) and the
	// call reads nothing; once any failure is known, or without the
	// announcements, each call reads the fleet's state (one GET), so that the
	// fleet stops at exactly its threshold even if an announcement is late.
	// Writes happen only on failures and recoveries.
	g.mu.Lock()
	steady := g.state == gobreaker.StateClosed && g.failures == 0
	g.mu.Unlock()
	if !steady || !g.watching.Load() {
		g.refresh()
	}
	g.mu.Lock()
	st, until := g.effectiveLocked(time.Now()), g.until
	g.mu.Unlock()
	probe, probeToken := false, ""
	switch st {
	case gobreaker.StateOpen:
		g.metrics.request(g.Name(), "open")
		trace.SpanFromContext(ctx).AddEvent("breaker open: not called")
		return Reply{}, &ErrOpen{Provider: g.Name(), Until: until}
	case gobreaker.StateHalfOpen:
		// One probe for the whole fleet; everyone else keeps failing over.
		probeToken = newToken()
		ok, err := g.rdb.SetNX(ctx, rkeys.BreakerProbe(g.Name()), probeToken, g.set.OpenFor).Result()
		if err != nil || !ok {
			g.metrics.request(g.Name(), "open")
			trace.SpanFromContext(ctx).AddEvent("breaker half-open, another worker probes: not called")
			return Reply{}, &ErrOpen{Provider: g.Name(), Until: time.Now().Add(g.set.Refresh)}
		}
		probe = true
		g.log.Info().Msg("circuit breaker half-open: probing")
	}
	reply, err = g.call(ctx, req, onDelta)
	var capErr *CapacityError
	if !errors.As(err, &capErr) {
		g.metrics.request(g.Name(), outcome(err))
		if err == nil {
			g.metrics.tokens(g.Name(), g.model, g.priced, reply.Usage)
		}
		g.record(st, err)
	}
	if probe {
		// Only its own claim: a probe that outlived it must not free the
		// claim of the probe that came after.
		_ = deleteIfOwner.Run(context.WithoutCancel(ctx), g.rdb, []string{rkeys.BreakerProbe(g.Name())}, probeToken).Err()
	}
	return reply, err
}

// call makes the provider call within the fleet's capacity for the provider:
// it waits for a slot (in place, up to the inline bound), and on a 429 pauses
// the provider for the fleet and waits again. Capacity waits never count as
// failures; a wait too long for one attempt is a *CapacityError.
func (g *Guarded) call(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, error) {
	if g.cap == nil {
		return g.stream(ctx, req, onDelta)
	}
	cost := estimateCost(req)
	budget := inlineWait(ctx, g.cap.set.MaxInlineWait)
	for {
		s, err := g.cap.acquire(ctx, cost, req.Priority == PriorityHigh, &budget)
		if err != nil {
			return Reply{}, err
		}
		reply, emitted, err := g.callHolding(ctx, s, req, onDelta)
		if RateLimited(err) && !emitted {
			var pe *Error
			errors.As(err, &pe)
			s.rateLimited(ctx, pe.RetryAfter)
			trace.SpanFromContext(ctx).AddEvent("rate limited (429): the fleet pauses the provider", trace.WithAttributes(
				attribute.Int64("chatfleet.retry_after_ms", pe.RetryAfter.Milliseconds())))
			g.log.Debug().Dur("retry_after", pe.RetryAfter).Msg("provider at capacity (429); waiting")
			continue
		}
		s.release(ctx, reply.Usage.PromptTokens+reply.Usage.CompletionTokens, err == nil)
		return reply, err
	}
}

// callHolding makes one call holding slot s. A panic in the provider or in
// onDelta frees the slot on its way up (the worker's middleware recovers
// it); otherwise the caller settles the slot with what the call used.
func (g *Guarded) callHolding(ctx context.Context, s *slot, req Request, onDelta func(Delta) error) (reply Reply, emitted bool, err error) {
	settled := false
	defer func() {
		if !settled {
			s.release(ctx, 0, false)
		}
	}()
	reply, err = g.stream(ctx, req, func(d Delta) error { emitted = true; return onDelta(d) })
	settled = true
	return reply, emitted, err
}

// record feeds an outcome to the shared breaker. Only provider failures and
// successes count; client errors and cancels do not. A success while all is
// well changes nothing and is not written.
func (g *Guarded) record(seen gobreaker.State, err error) {
	var pe *Error
	if err != nil && (!Retryable(err) || RateLimited(err) || (errors.As(err, &pe) && pe.AfterOutput)) {
		return // the caller's fault, a capacity signal, or a stall mid-reply: not the provider's health
	}
	g.mu.Lock()
	steady := err == nil && seen == gobreaker.StateClosed && g.failures == 0
	g.mu.Unlock()
	if steady {
		return
	}
	xerr := g.store.serialize(g.Name(), func() error {
		_, xerr := g.dcb.Execute(func() (struct{}, error) { return struct{}{}, err })
		return xerr
	})
	if xerr != nil && !errors.Is(xerr, err) && !errors.Is(xerr, gobreaker.ErrOpenState) && !errors.Is(xerr, gobreaker.ErrTooManyRequests) {
		g.log.Warn().Err(xerr).Msg("could not record the call in the shared breaker")
	}
	g.refresh()
}

func (g *Guarded) refreshLoop(ctx context.Context) {
	t := time.NewTicker(g.set.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.refresh()
		}
	}
}

// watch re-reads the shared state whenever a process announces a change
// (breakerStore.SetData), and at each (re)subscription, since announcements
// made while the connection was down are lost.
func (g *Guarded) watch(ctx context.Context) {
	ps := g.rdb.Subscribe(ctx, rkeys.BreakerChanged(g.Name()))
	defer ps.Close()
	for {
		msg, err := ps.Receive(ctx)
		switch {
		case ctx.Err() != nil:
			g.watching.Store(false)
			return
		case err != nil:
			g.watching.Store(false) // go-redis reconnects and subscribes again
			time.Sleep(100 * time.Millisecond)
		default:
			if _, ok := msg.(*redis.Subscription); ok {
				g.refresh()
				g.watching.Store(true)
				continue
			}
			g.refresh()
		}
	}
}

// refresh reads the fleet's shared state (one GET) into this process's copy.
func (g *Guarded) refresh() {
	raw, err := g.store.GetData(sharedStateName(g.Name()))
	if err != nil || len(raw) == 0 {
		return // keep the last copy while Redis is unreachable
	}
	var s gobreaker.SharedState
	if err := json.Unmarshal(raw, &s); err != nil {
		return
	}
	g.mu.Lock()
	g.state, g.failures, g.until = s.State, s.Counts.ConsecutiveFailures, time.Time{}
	if s.State == gobreaker.StateOpen {
		g.until = s.Expiry
	}
	eff := g.effectiveLocked(time.Now())
	g.mu.Unlock()
	g.metrics.breaker(g.Name(), eff)
}

// sharedStateName is the name gobreaker stores its shared state under.
func sharedStateName(provider string) string { return "gobreaker:state:" + provider }

func outcome(err error) string {
	switch {
	case err == nil:
		return "success"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case Retryable(err):
		return "error"
	}
	var pe *Error
	if errors.As(err, &pe) {
		return "rejected"
	}
	return "aborted"
}
