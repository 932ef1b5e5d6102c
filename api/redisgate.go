package api

import (
	"context"
	"fmt"
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
// the gate, one answer opens it. Requests already in flight when Redis hangs
// still wait for their own timeouts.
type redisGate struct {
	down atomic.Bool
}

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
				g.down.Store(err != nil && ctx.Err() == nil)
			case <-time.After(probeWait):
				g.down.Store(true)
				err := <-done // one probe at a time
				g.down.Store(err != nil && ctx.Err() == nil)
			}
		}
	}
}

// middleware refuses requests while the gate is shut.
func (g *redisGate) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if g.down.Load() {
			return fmt.Errorf("redis does not answer: %w", store.ErrUnavailable)
		}
		return next(c)
	}
}
