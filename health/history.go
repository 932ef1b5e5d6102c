package health

import (
	"context"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// The fleet keeps its own figures of the last 15 minutes, so that the
// console can chart them without Prometheus: a Redis hash per 10-second
// slot (rkeys.FleetHistory) that the API processes write the backlog and
// throughput into as they sample the queues, and the workers the times to
// first token they saw.
const (
	HistorySlot = 10 * time.Second
	HistorySpan = 15 * time.Minute
	// historyKeep outlives the span by a slot, so a whole span is always there.
	historyKeep = HistorySpan + 2*HistorySlot
)

func slotOf(t time.Time) int64 {
	return t.Unix() / int64(HistorySlot/time.Second) * int64(HistorySlot/time.Second)
}

// FirstTokens sums the times to first token a worker sees and adds them to
// the fleet's history once a slot (one round trip a slot, none when idle).
type FirstTokens struct {
	rdb   redis.UniversalClient
	mu    sync.Mutex
	sumMS float64
	n     int64
}

// NewFirstTokens returns the worker's recorder and flushes it until ctx ends.
func NewFirstTokens(ctx context.Context, rdb redis.UniversalClient) *FirstTokens {
	f := &FirstTokens{rdb: rdb}
	go f.flushLoop(ctx)
	return f
}

// Observe records one job's time from submit to its first token.
func (f *FirstTokens) Observe(d time.Duration) {
	f.mu.Lock()
	f.sumMS += float64(d.Microseconds()) / 1000
	f.n++
	f.mu.Unlock()
}

func (f *FirstTokens) flushLoop(ctx context.Context) {
	for {
		// Flush just after each slot ends, into the slot that ended, so
		// that a slot's figures are the jobs that began streaming in it.
		now := time.Now()
		next := time.Unix(slotOf(now), 0).Add(HistorySlot)
		select {
		case <-ctx.Done():
			f.flush(context.WithoutCancel(ctx), slotOf(now)) // what the last slot saw
			return
		case <-time.After(time.Until(next) + 100*time.Millisecond):
			f.flush(ctx, slotOf(next)-int64(HistorySlot/time.Second))
		}
	}
}

func (f *FirstTokens) flush(ctx context.Context, slot int64) {
	f.mu.Lock()
	sum, n := f.sumMS, f.n
	f.sumMS, f.n = 0, 0
	f.mu.Unlock()
	if n == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	key := rkeys.FleetHistory(slot)
	_, err := f.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HIncrByFloat(ctx, key, "ttft_ms", sum)
		p.HIncrBy(ctx, key, "ttft_n", n)
		p.Expire(ctx, key, historyKeep)
		return nil
	})
	if err != nil { // a chart's point is lost, not worth more
		f.mu.Lock()
		f.sumMS, f.n = f.sumMS+sum, f.n+n // into the next slot instead
		f.mu.Unlock()
	}
}

// recordHistory writes the backlog and the throughput just sampled into the
// current slot. Every API process writes the same figures; the last wins.
func (f *Fleet) recordHistory(ctx context.Context, backlog int) {
	rate, ok := f.rateOver(HistorySlot + time.Second) // the last slot's samples
	fields := []any{"backlog", backlog}
	if ok {
		fields = append(fields, "jobs_per_second", strconv.FormatFloat(rate, 'f', 3, 64))
	}
	key := rkeys.FleetHistory(slotOf(time.Now()))
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, _ = f.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error { // a lost point is a gap in a chart
		p.HSet(ctx, key, fields...)
		p.Expire(ctx, key, historyKeep)
		return nil
	})
}

// HistoryPoint is one slot of the fleet's figures; a figure nobody recorded
// in the slot is null.
type HistoryPoint struct {
	At                time.Time `json:"at"`
	Backlog           *int      `json:"backlog"`
	JobsPerSecond     *float64  `json:"jobs_per_second"`
	TimeToFirstTokenS *float64  `json:"time_to_first_token_seconds"` // mean over the slot's jobs
}

// history answers the last 15 minutes of the fleet's figures, oldest first.
func (f *Fleet) history(c echo.Context) error {
	ctx := c.Request().Context()
	last := slotOf(time.Now())
	step := int64(HistorySlot / time.Second)
	first := last - int64(HistorySpan/HistorySlot-1)*step
	var cmds []*redis.SliceCmd
	_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for s := first; s <= last; s += step {
			cmds = append(cmds, p.HMGet(ctx, rkeys.FleetHistory(s), "backlog", "jobs_per_second", "ttft_ms", "ttft_n"))
		}
		return nil
	})
	if err != nil {
		c.Response().Header().Set("Retry-After", "1")
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"error": "history unreadable: Redis unreachable"})
	}
	points := make([]HistoryPoint, 0, len(cmds))
	for i, cmd := range cmds {
		v := cmd.Val()
		pt := HistoryPoint{At: time.Unix(first+int64(i)*step, 0).UTC()}
		if n, ok := number(v[0]); ok {
			b := int(n)
			pt.Backlog = &b
		}
		if r, ok := number(v[1]); ok {
			pt.JobsPerSecond = &r
		}
		if sum, ok := number(v[2]); ok {
			if n, ok := number(v[3]); ok && n > 0 {
				m := math.Round(sum/n) / 1000
				pt.TimeToFirstTokenS = &m
			}
		}
		points = append(points, pt)
	}
	return c.JSON(http.StatusOK, map[string]any{
		"slot_seconds": step, "threshold": f.threshold, "points": points,
	})
}

func number(v any) (float64, bool) {
	s, ok := v.(string)
	if !ok {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	return f, err == nil
}
