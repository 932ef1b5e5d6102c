package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// startAttempt starts an attempt in one round trip: it checks the session's
// turn, marks the job active, takes the attempt's lease (by Redis's clock)
// and reads the session's history. Returns {'wait', head} when an earlier
// job holds the turn (a task that arrived early, from an older API: the job
// is pointed at the fresh task id, which the release that gives it the turn
// enqueues), {'done'} when the job has finished, another task now runs it
// (it was taken over) or another run of the same task holds a live lease, {'gone'} when its record is gone, else {'run',
// attempt, fence, turn_at, followed, log length, history…}. The attempt's fence token, one more than any
// before it (never reset: a deferral gives back an attempt's number, a re-run
// restarts the count), fences every earlier attempt out and names its lease.
// KEYS: job, order, history, leases, events, ahead. ARGV[1]: startArgs JSON.
var startAttempt = redis.NewScript(lua(statusLua, redisNowLua, extendLua, settleLua, `
local a = cjson.decode(ARGV[1])
local job, order, history, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, now, with_history, task, lease, fresh, runner = a.id, a.now, a.with_history, a.task, a.lease, a.fresh, a.runner
local keep = a.keep
local rec = redis.call('HMGET', job, 'status', 'task', 'attempts', 'started_at', 'turn_at', 'followed')
local st, owner = rec[1], rec[2]
if not st then return {'gone'} end
if terminal(st) then return {'done'} end
if owner and owner ~= task then return {'done'} end
-- The same task again while its attempt's lease is live: a second run of a
-- job handed out twice (orchestration/direct.go), not a redelivery of a task
-- whose worker died (its lease expired) or stopped (it gave its lease up).
if st == ACTIVE then
  local live = tonumber(redis.call('ZSCORE', leases, id .. ':' .. (redis.call('HGET', job, 'fence') or '')))
  if live and live > redis_now() then return {'done'} end
end
local head = redis.call('LINDEX', order, 0)
if head and head ~= id then
  redis.call('HSET', job, 'task', fresh)
  return {'wait', head}
end
-- a takeover: what the last attempt published ahead of the log goes in
-- first, so the retraction (jobs.Attempt.retractInterrupted) follows it
settle(KEYS[5], KEYS[6], tonumber(redis.call('HGET', job, 'fence')))
redis.call('DEL', KEYS[6])
local n = (tonumber(rec[3]) or 0) + 1
local f = redis.call('HINCRBY', job, 'fence', 1)
redis.call('HSET', job, 'status', ACTIVE, 'attempts', n, 'started_at', rec[4] or now, 'runner', runner)
redis.call('ZADD', leases, redis_now() + lease, id .. ':' .. f)
extend(leases, keep)
extend(job, keep)
extend(order, keep)
local out = {'run', tostring(n), tostring(f), rec[5] or '', rec[6] or '', tostring(redis.call('LLEN', KEYS[5]))}
if with_history then
  for _, m in ipairs(redis.call('LRANGE', history, 0, -1)) do out[#out + 1] = m end
end
return out
`))

// startArgs are startAttempt's arguments.
type startArgs struct {
	ID          string `json:"id"`
	Now         string `json:"now"` // the record's started_at, when it has none
	WithHistory bool   `json:"with_history"`
	Task        string `json:"task"`
	Lease       int64  `json:"lease"` // ms
	Fresh       string `json:"fresh"`
	Runner      string `json:"runner"` // the process that runs the attempt (Options.Runner)
	Keep        int64  `json:"keep"`   // s, Store.keep: the record, order and lease index are kept that long
}

// markDeferred hands back an attempt that never reached a provider (every
// breaker open, or no capacity): queued again, its attempt not counted. With
// a task id the job is to run under that task (it goes back to the
// scheduler, not to asynq's retry).
// KEYS: job, order, leases, events. ARGV[1]: deferArgs JSON.
var markDeferred = redis.NewScript(lua(holdLua, ownsLua, `
local a = cjson.decode(ARGV[1])
local ttl, fence, member = a.ttl, a.fence, a.member
if not owns(KEYS[1], fence) then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'status', QUEUED)
if a.task then redis.call('HSET', KEYS[1], 'task', a.task) end
redis.call('ZREM', KEYS[3], member)
hold(KEYS[1], KEYS[2], KEYS[4], ttl)
return 1
`))

// deferArgs are markDeferred's arguments.
type deferArgs struct {
	TTL    int64   `json:"ttl"` // s
	Fence  int     `json:"fence"`
	Member string  `json:"member"`         // the attempt's lease
	Task   *string `json:"task,omitempty"` // the task to run the job under; nil: the same
}

// markRetrying records a failed attempt that will be retried. What its call
// used (spentLua) is counted first, even when the attempt was fenced out: the
// provider billed it all the same.
// KEYS: job, order, leases, events, usage ledger. ARGV[1]: retryArgs JSON.
var markRetrying = redis.NewScript(lua(holdLua, ownsLua, spentLua, `
local a = cjson.decode(ARGV[1])
local err, ttl, fence, member = a.error, a.ttl, a.fence, a.member
count_spent(KEYS[1], KEYS[5], a.spent)
if not owns(KEYS[1], fence) then return 0 end
redis.call('HSET', KEYS[1], 'status', RETRYING, 'error', err)
redis.call('ZREM', KEYS[3], member)
hold(KEYS[1], KEYS[2], KEYS[4], ttl)
return 1
`))

// retryArgs are markRetrying's arguments.
type retryArgs struct {
	Error  string    `json:"error"` // JobError JSON
	TTL    int64     `json:"ttl"`   // s
	Fence  int       `json:"fence"`
	Member string    `json:"member"` // the attempt's lease
	Spent  spentArgs `json:"spent"`
}

// holdJob keeps a job that waits without an attempt alive. KEYS: job, order, events. ARGV[1]: holdArgs JSON.
var holdJob = redis.NewScript(lua(holdLua, `
local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
hold(KEYS[1], KEYS[2], KEYS[3], a.ttl)
return 1
`))

// holdArgs are holdJob's arguments.
type holdArgs struct {
	TTL int64 `json:"ttl"` // s
}

// abandon ends an attempt cut short by a shutdown: its lease expires now, so
// that a rescuer takes the job over at once. KEYS: job, leases. ARGV[1]: leaseArgs JSON.
var abandon = redis.NewScript(lua(ownsLua, `
local a = cjson.decode(ARGV[1])
if not owns(KEYS[1], a.fence) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', 0, a.member)
return 1
`))

// leaseArgs name an attempt and its lease: abandon's and takeOver's arguments.
type leaseArgs struct {
	Fence  int    `json:"fence"`
	Member string `json:"member"` // rkeys.LeaseMember
	Task   string `json:"task"`   // takeOver: the new task id
}

// Attempt is what StartAttempt found.
type Attempt struct {
	N int // the attempt's number; 0: the job has finished, do not run it
	// Fence names the attempt in every write it makes (events, leases,
	// outcome): larger than any earlier attempt's, so a stale one is refused.
	Fence int
	// Head is set when an earlier job of the session holds the turn: the
	// task came early, and the job now waits for its turn under a fresh task.
	Head    string
	History []Message // the session's history, when asked for
	// BadHistory is set when history entries could not be decoded; History is then empty.
	BadHistory error
	// TurnAt is when the job got its session's turn from an earlier job
	// (zero when it never waited for one).
	TurnAt time.Time
	// Followed: a client has asked for the job's tokens live (Wake).
	Followed bool
	// Logged is how many events the job's log held when the attempt began
	// (what earlier attempts sent ahead of it included).
	Logged int64
}

// StartAttempt checks the session's turn, marks the job active, takes the
// attempt's lease (until now + lease) and reads the session's history in one
// round trip. task is the asynq task running it: a task that no longer owns
// the job (it was taken over) gets N = 0; fresh is the task id the job waits
// under when it is not its turn yet. ErrNotFound: the record is gone.
func (s *Store) StartAttempt(ctx context.Context, id, tenant, session, task, fresh string, withHistory bool, lease time.Duration) (Attempt, error) {
	res, err := startAttempt.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.History(tenant, session), rkeys.Leases(rkeys.Bucket(id)), rkeys.Events(id), rkeys.Ahead(id)},
		argsJSON(startArgs{ID: id, Now: fmtTime(s.opt.Clock()), WithHistory: withHistory, Task: task, Lease: lease.Milliseconds(), Fresh: fresh, Runner: s.opt.Runner, Keep: s.keep()})).StringSlice()
	if err != nil {
		return Attempt{}, unavailable("start attempt", err)
	}
	if len(res) == 0 || (res[0] == "wait" && len(res) < 2) || (res[0] == "run" && len(res) < 6) {
		return Attempt{}, fmt.Errorf("start attempt: unexpected reply %q", res)
	}
	switch res[0] {
	case "wait":
		return Attempt{Head: res[1]}, nil
	case "done":
		return Attempt{}, nil
	case "gone":
		return Attempt{}, ErrNotFound
	}
	a := Attempt{}
	a.N, _ = strconv.Atoi(res[1])
	a.Fence, _ = strconv.Atoi(res[2])
	if ms, err := strconv.ParseInt(res[3], 10, 64); err == nil {
		a.TurnAt = time.UnixMilli(ms)
	}
	a.Followed = res[4] == "1"
	a.Logged, _ = strconv.ParseInt(res[5], 10, 64)
	for _, raw := range res[6:] {
		var m Message
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			a.History, a.BadHistory = nil, fmt.Errorf("history entry: %w", err)
			break
		}
		a.History = append(a.History, m)
	}
	return a, nil
}

// MarkDeferred undoes StartAttempt for an attempt that never reached a
// provider (every breaker open, or no capacity): the job is queued again,
// keeps its attempts, and its record lives at least until the retention past
// `until`, when it runs again.
func (s *Store) MarkDeferred(ctx context.Context, id, tenant, session string, attempt int, until time.Time) error {
	_, err := s.markDeferred(ctx, id, tenant, session, attempt, s.holdFor(until))
	return err
}

// MarkGivenBack undoes StartAttempt for an attempt that found its model at
// quota: the job is queued again under a new task id (task), for the
// scheduler to hand out when the model has capacity. False: the attempt no
// longer owns the job.
func (s *Store) MarkGivenBack(ctx context.Context, id, tenant, session string, attempt int, task string) (bool, error) {
	return s.markDeferred(ctx, id, tenant, session, attempt, s.keep(), &task)
}

func (s *Store) markDeferred(ctx context.Context, id, tenant, session string, attempt int, ttl int64, task ...*string) (bool, error) {
	a := deferArgs{TTL: ttl, Fence: attempt, Member: rkeys.LeaseMember(id, attempt)}
	if len(task) > 0 {
		a.Task = task[0]
	}
	n, err := markDeferred.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.Leases(rkeys.Bucket(id)), rkeys.Events(id)},
		argsJSON(a)).Int()
	if err != nil {
		return false, unavailable("mark deferred", err)
	}
	return n == 1, nil
}

// MarkRetrying records a failed attempt that asynq will retry no later than
// `until`, and counts what its call used; the record lives at least until the
// retention past it.
func (s *Store) MarkRetrying(ctx context.Context, id, tenant, session string, attempt int, e JobError, until time.Time, spent *Spent) error {
	b, _ := json.Marshal(e)
	now := s.opt.Clock().UTC()
	err := markRetrying.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.Leases(rkeys.Bucket(id)), rkeys.Events(id),
		rkeys.Usage(rkeys.Bucket(id), tenant, now.Format("2006-01"))},
		argsJSON(retryArgs{Error: string(b), TTL: s.holdFor(until), Fence: attempt, Member: rkeys.LeaseMember(id, attempt), Spent: s.spentArgs(spent, now)})).Err()
	if err != nil {
		return unavailable("mark retrying", err)
	}
	return nil
}

// Hold keeps a job that waits in the queue without starting an attempt alive
// until the retention past `until`.
func (s *Store) Hold(ctx context.Context, id, tenant, session string, until time.Time) error {
	if err := holdJob.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.Events(id)}, argsJSON(holdArgs{TTL: s.holdFor(until)})).Err(); err != nil {
		return unavailable("hold job", err)
	}
	return nil
}
func (s *Store) holdFor(until time.Time) int64 {
	return seconds(max(time.Until(until), 0) + s.opt.Retention)
}

// Abandon ends an attempt cut short by a shutdown: its lease expires at once,
// so that a rescuer takes the job over now rather than after the lease.
func (s *Store) Abandon(ctx context.Context, id string, attempt int) error {
	if err := abandon.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Leases(rkeys.Bucket(id))}, argsJSON(leaseArgs{Fence: attempt, Member: rkeys.LeaseMember(id, attempt)})).Err(); err != nil {
		return unavailable("abandon attempt", err)
	}
	return nil
}
