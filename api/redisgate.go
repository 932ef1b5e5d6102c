package api

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/store"
)

// redisGate answers 503 at once while Redis does not answer. A Redis that
// hangs (frozen, overloaded; connections stay open) would otherwise hold
// every request for the client's command timeouts, seconds, and a load
// balancer with a short timeout would show errors instead of 503s. A prober
// pings every probeEvery with a deadline of probeWait; one failed ping shuts
// the gate, one answer opens it. When it shuts, the requests under way are
// cancelled (their contexts, with errRedisHung as the cause, and the reads
// they wait on) and answered 503 too, so none waits longer than the probe.
type redisGate struct {
	down atomic.Bool
	// interrupt cuts short the reads under way on the client's connections
	// (redisconn.Conns.Interrupt); nil: cancelled requests wait out their
	// reads.
	interrupt func()

	mu       sync.Mutex
	seq      uint64
	underWay map[uint64]context.CancelCauseFunc
}

// errRedisHung is the cause the gate cancels requests with. It wraps
// store.ErrUnavailable: a submit stops for it (jobs.Submit), and the
// client gets 503 with Retry-After.
var errRedisHung = fmt.Errorf("redis does not answer: %w", store.ErrUnavailable)

const (
	probeEvery = 250 * time.Millisecond
	probeWait  = 500 * time.Millisecond
)

// watch probes rdb until ctx ends.
func (g *redisGate) watch(ctx context.Context, rdb redis.UniversalClient) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// The client's own read timeout (seconds) decides when a ping to
			// a hung Redis fails: the gate shuts when none answered within
			// probeWait, and opens again with the first answer.
			done := make(chan error, 1)
			go func() { done <- rdb.Ping(ctx).Err() }()
			select {
			case err := <-done:
				g.set(err != nil && ctx.Err() == nil)
			case <-time.After(probeWait):
				g.set(true)
				err := <-done // one probe at a time
				g.set(err != nil && ctx.Err() == nil)
			}
		}
	}
}

// set opens or shuts the gate; shutting it cancels the requests under way.
func (g *redisGate) set(down bool) {
	if !down {
		g.down.Store(false)
		return
	}
	g.mu.Lock()
	if g.down.Swap(true) {
		g.mu.Unlock()
		return
	}
	cancelled := make([]uint64, 0, len(g.underWay))
	for id, cancel := range g.underWay {
		cancel(errRedisHung)
		cancelled = append(cancelled, id)
	}
	g.mu.Unlock()
	if g.interrupt != nil && len(cancelled) > 0 {
		go g.interruptUntilGone(cancelled)
	}
}

// interruptUntilGone interrupts the client's reads until the cancelled
// requests have ended: a command that set its read deadline just after an
// interrupt would otherwise wait out the read timeout. A few rounds suffice;
// the bound keeps a request stuck elsewhere from interrupting for ever.
func (g *redisGate) interruptUntilGone(ids []uint64) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for range 2 * probeWait / (50 * time.Millisecond) {
		g.interrupt()
		<-t.C
		if !g.anyUnderWay(ids) {
			return
		}
	}
}

func (g *redisGate) anyUnderWay(ids []uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, id := range ids {
		if _, ok := g.underWay[id]; ok {
			return true
		}
	}
	return false
}

// enter registers a request's cancel, or refuses it while the gate is shut.
// Under one lock with set, so that no request slips in unregistered as the
// gate shuts.
func (g *redisGate) enter(cancel context.CancelCauseFunc) (uint64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.down.Load() {
		return 0, false
	}
	if g.underWay == nil {
		g.underWay = map[uint64]context.CancelCauseFunc{}
	}
	g.seq++
	g.underWay[g.seq] = cancel
	return g.seq, true
}

func (g *redisGate) leave(id uint64) {
	g.mu.Lock()
	delete(g.underWay, id)
	g.mu.Unlock()
}

// middleware refuses requests while the gate is shut, and cancels those
// under way when it shuts: one that has not answered yet answers 503.
func (g *redisGate) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, cancel := context.WithCancelCause(c.Request().Context())
		defer cancel(nil)
		id, ok := g.enter(cancel)
		if !ok {
			return errRedisHung
		}
		defer g.leave(id)
		c.SetRequest(c.Request().WithContext(ctx))
		err := next(c)
		if errors.Is(context.Cause(ctx), errRedisHung) && !c.Response().Committed {
			// Whatever the handler made of its cancelled calls, the answer
			// is the gate's.
			if err != nil {
				return fmt.Errorf("%w: %v", errRedisHung, err)
			}
			return errRedisHung
		}
		return err
	}
}

// refuse refuses requests while the gate is shut, without cancelling those
// under way: a stream outlives a short stall of Redis, and one that ends is
// resumed with Last-Event-ID.
func (g *redisGate) refuse(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if g.down.Load() {
			return errRedisHung
		}
		return next(c)
	}
}
