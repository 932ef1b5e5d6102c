package store

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// One job's place in the scheduler, apart from the scheduling decisions in
// schedule.go: taking it out (a cancel), asking whether it is there, and
// reading the records of the jobs handed out.

// unscheduleJob takes a job out of the scheduler (it was canceled while it
// waited). O(n) in its tenant's queue of its model: cancels are rare, and a
// canceled job left in place would count as waiting until its turn came.
// KEYS: jobs. ARGV: {prefix, id, keep} as JSON.
var unscheduleJob = redis.NewScript(lua(schedLua, `
local a = cjson.decode(ARGV[1])
local P, id, keep = a.prefix, a.id, a.keep
local place = redis.call('HGET', KEYS[1], id)
if not place then return 0 end
local e = cjson.decode(place)
local q = P .. 'q:' .. e.lane .. ':' .. e.tenant .. ':' .. e.model
local tmk = P .. 'tm:' .. e.lane .. ':' .. e.tenant
redis.call('LREM', q, 1, e.entry)
local head = redis.call('LINDEX', q, 0)
if not head then
  redis.call('ZREM', tmk, e.model)
  redis.call('SREM', P .. 'bw:' .. e.model, e.lane .. '\n' .. e.tenant)
  local lk = P .. 'lane:' .. e.lane
  local pass = redis.call('ZSCORE', lk, e.tenant)
  if pass and redis.call('ZCARD', tmk) == 0 then
    redis.call('ZREM', lk, e.tenant)
    hset(P .. 'pass:' .. e.lane, e.tenant, pass)
  end
elseif redis.call('ZSCORE', tmk, e.model) then
  redis.call('ZADD', tmk, headAt(head), e.model)
end
redis.call('HDEL', KEYS[1], id)
redis.call('ZREM', P .. 'ml:' .. e.lane .. ':' .. e.model, id)
count(P, {tenant = e.tenant}, -1)
keepTouched(keep)
return 1
`))

// Unschedule takes a job that waits in the scheduler out of it (nothing when
// it is not there).
func (s *Store) Unschedule(ctx context.Context, id string) error {
	if err := unscheduleJob.Run(ctx, s.rdb, []string{rkeys.SchedJobs()}, argsJSON(map[string]any{"prefix": rkeys.SchedPrefix(), "id": id, "keep": s.keep()})).Err(); err != nil {
		return unavailable("unschedule job", err)
	}
	return nil
}

// IsScheduled reports whether a job waits in the scheduler.
func (s *Store) IsScheduled(ctx context.Context, id string) (bool, error) {
	ok, err := s.rdb.HExists(ctx, rkeys.SchedJobs(), id).Result()
	if err != nil {
		return false, unavailable("read scheduler", err)
	}
	return ok, nil
}

// ToRun is what handing a job to asynq needs of its record.
type ToRun struct {
	ID, Status, Task, Queue string
	CreatedAt               time.Time
	Payload                 []byte
}

// ToRun reads the records of jobs handed out by the scheduler (one pipeline);
// a record that is gone has no status.
func (s *Store) ToRun(ctx context.Context, ids []string) ([]ToRun, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, rkeys.Job(id), "status", "task", "queue", "created_at", "payload")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, unavailable("read jobs to run", err)
	}
	out := make([]ToRun, len(ids))
	for i, c := range cmds {
		v := c.Val()
		str := func(k int) string {
			if k < len(v) {
				x, _ := v[k].(string)
				return x
			}
			return ""
		}
		out[i] = ToRun{ID: ids[i], Status: str(0), Task: str(1), Queue: str(2), CreatedAt: parseTime(str(3)), Payload: []byte(str(4))}
	}
	return out, nil
}
