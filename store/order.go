package store

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// A session's turns run one at a time, in the order they were submitted: its
// order list holds its unfinished jobs, and only the head is in the
// scheduler or the queue. A job submitted behind others waits in Redis, not
// in a worker: when the head leaves the order (finished, canceled, lost), the
// script that removed it returns the next job, which the caller schedules at
// once (jobs.Manager.dispatch). The same script brings the next job's
// reconciler check within HandOffCheck: the hand-off is durable there, so a
// caller that dies before scheduling the job is covered within seconds.

// releaseLua takes a job out of its session's order. When the job held the
// turn it returns the next job: {id, task, queue, model, created_at, tenant, session},
// else nothing; {id} alone when the next job's record is gone.
// unfinished is the index of the session's bucket; r is a releaseArgs.
const releaseLua = `
local function release(order, unfinished, r)
  local id, tenant, session, prefix = r.id, r.tenant, r.session, r.prefix
  local head = redis.call('LINDEX', order, 0)
  redis.call('LREM', order, 0, id)
  if head ~= id then return nil end
  local nxt = redis.call('LINDEX', order, 0)
  if not nxt then return nil end
  redis.call('ZADD', unfinished, 'XX', r.check, tenant .. '\n' .. session .. '\n' .. nxt)
  -- a record that is gone stays gone (the reconciler forgets it): a write
  -- here would make a record without a TTL
  if redis.call('EXISTS', prefix .. nxt) == 1 then
    local t = redis.call('TIME') -- when its turn came: its trace's session-turn wait ends here
    redis.call('HSET', prefix .. nxt, 'turn_at', t[1] * 1000 + math.floor(t[2] / 1000))
  end
  local v = redis.call('HMGET', prefix .. nxt, 'task', 'queue', 'model', 'created_at')
  if not v[2] then return {nxt} end
  return {nxt, v[1] or nxt, v[2], v[3] or '', v[4] or '', tenant, session}
end
`

// Next is a session's job whose turn came when the job before it left the
// order: it goes to the scheduler now.
type Next struct {
	ID, Task, Queue string
	Tenant, Session string
	Model           string // the public model it asks for ("" for the default)
	CreatedAt       time.Time
	Gone            bool // its record is gone (the reconciler forgets it)
}

// releaseArgs are release's arguments (releaseLua): the job that leaves
// its session's order.
type releaseArgs struct {
	ID      string `json:"id"`
	Tenant  string `json:"tenant"`
	Session string `json:"session"`
	Prefix  string `json:"prefix"` // the key prefix of the session's records (rkeys.JobPrefix)
	Check   int64  `json:"check"`  // ms: the next job's check
}

func (s *Store) releaseArgs(tenant, session, id string) releaseArgs {
	return releaseArgs{ID: id, Tenant: tenant, Session: session, Prefix: rkeys.JobPrefix(id), Check: s.opt.Clock().Add(HandOffCheck).UnixMilli()}
}

// nextOf decodes what releaseLua returned (nil, {id} or its 7 values).
func nextOf(v any) *Next {
	f, ok := v.([]any)
	if !ok || (len(f) != 1 && len(f) != 7) {
		return nil
	}
	s := func(i int) string { x, _ := f[i].(string); return x }
	if len(f) == 1 {
		return &Next{ID: s(0), Gone: true}
	}
	created, _ := time.Parse(time.RFC3339Nano, s(4))
	return &Next{ID: s(0), Task: s(1), Queue: s(2), Model: s(3), CreatedAt: created, Tenant: s(5), Session: s(6)}
}

// release removes a job whose record is gone from its session's order.
// KEYS: order, unfinished. ARGV[1]: releaseArgs JSON.
var release = redis.NewScript(lua(releaseLua, `
local a = cjson.decode(ARGV[1])
return {release(KEYS[1], KEYS[2], a)}
`))

// Release takes a job (its record gone) out of its session's order and
// returns the job whose turn that made, if any.
func (s *Store) Release(ctx context.Context, tenant, session, id string) (*Next, error) {
	res, err := release.Run(ctx, s.rdb, []string{rkeys.SessionOrder(tenant, session), rkeys.Unfinished(rkeys.Bucket(id))},
		argsJSON(s.releaseArgs(tenant, session, id))).Slice()
	if err != nil {
		return nil, unavailable("release turn", err)
	}
	if len(res) == 0 {
		return nil, nil
	}
	return nextOf(res[0]), nil
}

// forget releases what a job whose record is gone or finished still holds:
// its place in the session's order and its index entry. Returns {held, next}.
// KEYS: order, unfinished. ARGV[1]: unfinishedArgs JSON (member, release).
var forget = redis.NewScript(lua(releaseLua, `
local a = cjson.decode(ARGV[1])
local held = redis.call('LPOS', KEYS[1], a.release.id) and 1 or 0
local nxt = release(KEYS[1], KEYS[2], a.release)
redis.call('ZREM', KEYS[2], a.member)
return {held, nxt}
`))

// unfinishedArgs name a job leaving the order and its entry in the
// reconciler's index: forget's and deleteJob's arguments.
type unfinishedArgs struct {
	Member  string      `json:"member"` // rkeys.UnfinishedMember
	Release releaseArgs `json:"release"`
}

// Forget releases what a job whose record is gone (or finished) still holds:
// its place in its session's order, its tenant count, its index entry. It
// reports whether it held a place in the order, and the job whose turn that made.
func (s *Store) Forget(ctx context.Context, u Unfinished) (bool, *Next, error) {
	res, err := forget.Run(ctx, s.rdb, []string{rkeys.SessionOrder(u.Tenant, u.SessionID), rkeys.Unfinished(rkeys.Bucket(u.ID))},
		argsJSON(unfinishedArgs{Member: rkeys.UnfinishedMember(u.Tenant, u.SessionID, u.ID), Release: s.releaseArgs(u.Tenant, u.SessionID, u.ID)})).Slice()
	if err != nil {
		return false, nil, unavailable("forget job", err)
	}
	s.uncount(ctx, u.Tenant, u.ID)
	held, _ := res[0].(int64)
	var next *Next
	if len(res) > 1 {
		next = nextOf(res[1])
	}
	return held == 1, next, nil
}

// HandOffCheck is how soon the reconciler looks at a job whose turn has just
// come: the script that ends the head sets it, so the hand-off is durable
// there, and a caller that dies before scheduling the job is covered within
// about this (plus the reconciler's round).
const HandOffCheck = 3 * time.Second

// WaitingCheck is how often the reconciler looks at a job that waits for its
// session's turn: the release that gives it the turn brings its check
// forward, so this is only a safety net.
const WaitingCheck = time.Hour

// parkWaiting moves the check of a job that is not its session's head to
// later (and keeps it alive: keepAliveLua); returns 0 (nothing changed) when
// the job holds the turn.
// KEYS: order, unfinished, job, events. ARGV[1]: keepAliveArgs JSON.
var parkWaiting = redis.NewScript(lua(holdLua, extendLua, keepAliveLua, `
local a = cjson.decode(ARGV[1])
local head = redis.call('LINDEX', KEYS[1], 0)
if not head or head == a.id then return 0 end
keep_alive(KEYS[1], KEYS[2], KEYS[3], KEYS[4], a.member, a.check, a.keep)
return 1
`))

// ParkIfWaiting reports whether a job waits behind an earlier job of its
// session; if so its next check is WaitingCheck away.
func (s *Store) ParkIfWaiting(ctx context.Context, u Unfinished) (bool, error) {
	n, err := parkWaiting.Run(ctx, s.rdb, s.unfinishedKeys(u), argsJSON(keepAliveArgs{ID: u.ID,
		Member: rkeys.UnfinishedMember(u.Tenant, u.SessionID, u.ID), Check: s.opt.Clock().Add(WaitingCheck).UnixMilli(), Keep: s.keep()})).Int()
	if err != nil {
		return false, unavailable("check session turn", err)
	}
	return n == 1, nil
}

// An unfinished job's record, session order and event log, and its bucket's
// index, are kept for Store.keep: at least the retention, and at least three
// times the longest gap between the reconciler's visits (WaitingCheck), each
// of which extends them again. So an unfinished job outlives any wait, in
// the session's order or the queue, however short the retention; when it
// ends, finish gives its record and log the retention.

// keepAliveLua: keep_alive sets an unfinished job's next check and keeps
// its keys, and the index, for keep seconds more.
const keepAliveLua = `
local function keep_alive(order, unfinished, job, events, member, check, keep)
  redis.call('ZADD', unfinished, 'XX', check, member)
  extend(unfinished, keep)
  hold(job, order, events, keep)
end
`

// keepAliveArgs are parkWaiting's and checkAt's arguments.
type keepAliveArgs struct {
	ID     string `json:"id"` // parkWaiting: the job, whose turn it must not be
	Member string `json:"member"`
	Check  int64  `json:"check"` // ms
	Keep   int64  `json:"keep"`  // s, Store.keep
}

// keep is how long an unfinished job's keys are kept from now (s).
func (s *Store) keep() int64 { return seconds(max(s.opt.Retention, 3*WaitingCheck)) }

// unfinishedKeys are an unfinished job's keys in keep_alive's order: order,
// unfinished, job, events.
func (s *Store) unfinishedKeys(u Unfinished) []string {
	return []string{rkeys.SessionOrder(u.Tenant, u.SessionID), rkeys.Unfinished(rkeys.Bucket(u.ID)), rkeys.Job(u.ID), rkeys.Events(u.ID)}
}

// SessionHead returns the job whose turn it is in a session ("" when none).
func (s *Store) SessionHead(ctx context.Context, tenant, session string) (string, error) {
	id, err := s.rdb.LIndex(ctx, rkeys.SessionOrder(tenant, session), 0).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", unavailable("session head", err)
	}
	return id, nil
}
