package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// What waits in the scheduler, for queue status, /health/detailed, the
// metrics and the console (the scheduler itself is schedule.go).

// schedStatus reads the scheduler's backlog: per lane and model (count,
// oldest, blocked until) and the busiest tenants, as JSON.
// KEYS: jobs. ARGV: {prefix, lanes, now (ms), top (tenants to list)} as JSON.
var schedStatus = redis.NewScript(`
local a = cjson.decode(ARGV[1])
local P, lanes, now, top = a.prefix, a.lanes, a.now, a.top
local out = {lanes = {}, models = {}, tenants = {}}
for _, m in ipairs(redis.call('SMEMBERS', P .. 'models')) do
  local blocked = tonumber(redis.call('ZSCORE', P .. 'blocked', m))
  if blocked and blocked <= now then blocked = nil end
  local total = 0
  for _, lane in ipairs(lanes) do
    local k = P .. 'ml:' .. lane .. ':' .. m
    local n = redis.call('ZCARD', k)
    if n > 0 then
      total = total + n
      local oldest = tonumber(redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')[2])
      out.lanes[#out.lanes + 1] = {lane = lane, model = m, queued = n, oldest = oldest, blocked = blocked or 0}
    end
  end
  if total == 0 and not blocked then redis.call('SREM', P .. 'models', m) end
end
local t = redis.call('ZREVRANGE', P .. 'tc', 0, top - 1, 'WITHSCORES')
for i = 1, #t, 2 do out.tenants[#out.tenants + 1] = {tenant = t[i], queued = tonumber(t[i + 1])} end
out.handed = tonumber(redis.call('GET', P .. 'handed')) or 0
return cjson.encode(out)
`)

// SchedLaneModel is the scheduler's backlog of one model in one lane.
type SchedLaneModel struct {
	Lane         string    `json:"lane"`
	Model        string    `json:"model"`
	Queued       int       `json:"queued"`
	Oldest       time.Time `json:"-"`
	BlockedUntil time.Time `json:"-"` // zero: the model has capacity
	OldestMS     float64   `json:"oldest"`
	BlockedMS    float64   `json:"blocked"`
}

// SchedTenant is a tenant's backlog in the scheduler.
type SchedTenant struct {
	Tenant string `json:"tenant"`
	Queued int    `json:"queued"`
}

// SchedBacklog is what waits in the scheduler.
type SchedBacklog struct {
	Lanes   []SchedLaneModel `json:"lanes"` // one per lane and model with jobs
	Tenants []SchedTenant    `json:"tenants"`
	// Handed counts the jobs handed out to workers so far: what drains the
	// backlog.
	Handed int64 `json:"handed"`
	// Running counts the attempts running in the fleet (Store.Running; read
	// apart from the scheduler).
	Running int `json:"-"`
}

// SchedStatus reads the scheduler's backlog (tenants: the `top` busiest).
func (s *Store) SchedStatus(ctx context.Context, lanes []string, top int) (SchedBacklog, error) {
	raw, err := schedStatus.Run(ctx, s.rdb, []string{rkeys.SchedJobs()},
		argsJSON(map[string]any{"prefix": rkeys.SchedPrefix(), "lanes": lanes, "now": s.opt.Clock().UnixMilli(), "top": top})).Text()
	if err != nil {
		return SchedBacklog{}, unavailable("read scheduler", err)
	}
	// cjson encodes an empty table as an object: read both shapes.
	var v struct {
		Lanes   json.RawMessage `json:"lanes"`
		Tenants json.RawMessage `json:"tenants"`
		Handed  float64         `json:"handed"`
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return SchedBacklog{}, fmt.Errorf("read scheduler: %w", err)
	}
	b := SchedBacklog{Handed: int64(v.Handed)}
	if len(v.Lanes) > 0 && v.Lanes[0] == '[' {
		if err := json.Unmarshal(v.Lanes, &b.Lanes); err != nil {
			return SchedBacklog{}, fmt.Errorf("read scheduler: %w", err)
		}
	}
	if len(v.Tenants) > 0 && v.Tenants[0] == '[' {
		if err := json.Unmarshal(v.Tenants, &b.Tenants); err != nil {
			return SchedBacklog{}, fmt.Errorf("read scheduler: %w", err)
		}
	}
	for i := range b.Lanes {
		l := &b.Lanes[i]
		l.Oldest = time.UnixMilli(int64(l.OldestMS))
		if l.BlockedMS > 0 {
			l.BlockedUntil = time.UnixMilli(int64(l.BlockedMS))
		}
	}
	return b, nil
}

// WaitingForTurn counts the unfinished jobs that wait for their session's
// turn: their reconciler check is parked WaitingCheck away (order.go).
func (s *Store) WaitingForTurn(ctx context.Context) (int, error) {
	from := strconv.FormatInt(s.opt.Clock().Add(WaitingCheck/2).UnixMilli(), 10)
	return s.countFrom(ctx, rkeys.Unfinished, from, "count waiting turns")
}

// Running counts the attempts running in the fleet: the live leases.
func (s *Store) Running(ctx context.Context) (int, error) {
	return s.countFrom(ctx, rkeys.Leases, strconv.FormatInt(s.opt.Clock().UnixMilli(), 10), "count running attempts")
}

// countFrom counts the members scored from `from` on in every bucket's
// sorted set key(b), one command per bucket in one pipeline.
func (s *Store) countFrom(ctx context.Context, key func(int) string, from, what string) (int, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, rkeys.Buckets)
	for b := range rkeys.Buckets {
		cmds[b] = pipe.ZCount(ctx, key(b), from, "+inf")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, unavailable(what, err)
	}
	n := 0
	for _, c := range cmds {
		n += int(c.Val())
	}
	return n, nil
}
