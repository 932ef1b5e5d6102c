package store

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// A running attempt's lease is a member "<job id>:<fence>" of its bucket's
// lease set, scored with its expiry by Redis's clock: startAttempt writes it,
// RenewLeases extends it, the rescuer claims it once expired (ClaimExpired)
// and takes the job over (TakeOver).

// renewLeases extends running attempts' leases that still exist, and keeps
// the lease set for keep seconds more.
// KEYS: the bucket's leases. ARGV[1]: renewArgs JSON.
var renewLeases = redis.NewScript(lua(redisNowLua, extendLua, `
local a = cjson.decode(ARGV[1])
local expiry = redis_now() + a.lease
local args = {}
for _, m in ipairs(a.members) do args[#args + 1] = expiry; args[#args + 1] = m end
extend(KEYS[1], a.keep)
return redis.call('ZADD', KEYS[1], 'XX', unpack(args))
`))

// renewArgs are renewLeases' arguments.
type renewArgs struct {
	Lease   int64    `json:"lease"` // ms
	Keep    int64    `json:"keep"`  // s, Store.keep
	Members []string `json:"members"`
}

// claimDue takes up to `limit` members whose score is due by Redis's clock
// and moves them `claim` ms ahead, so that one caller handles each, and a
// caller that dies before it is done leaves them to be claimed again:
// unfinished jobs whose check is due (the reconciler), expired leases (the
// rescuer). KEYS: the sorted sets (up to `limit` of each). ARGV[1]:
// claimArgs JSON.
var claimDue = redis.NewScript(lua(redisNowLua, `
local a = cjson.decode(ARGV[1])
local limit, claim = a.limit, a.claim
local now = redis_now()
local out = {}
for _, key in ipairs(KEYS) do
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
  for _, m in ipairs(due) do
    redis.call('ZADD', key, 'XX', now + claim, m)
    out[#out + 1] = m
  end
end
return out
`))

// claimArgs are claimDue's arguments.
type claimArgs struct {
	Limit int   `json:"limit"`
	Claim int64 `json:"claim"` // ms
}

// takeOver hands a job whose attempt lost its lease to a new task: the job is
// queued again under the new task id, which fences the old attempt out; the
// stale task, if asynq ever runs it again, finds another task owns the job.
// Either way the claimed lease is done with and leaves the index.
// Returns {1, payload, queue}, or {0} when the attempt had ended anyway.
// KEYS: job, leases. ARGV[1]: leaseArgs JSON (fence, new task id, lease member).
var takeOver = redis.NewScript(lua(ownsLua, `
local a = cjson.decode(ARGV[1])
local fence, task, member = a.fence, a.task, a.member
redis.call('ZREM', KEYS[2], member)
if not owns(KEYS[1], fence) then return {0} end
redis.call('HSET', KEYS[1], 'status', QUEUED, 'task', task)
return {1, redis.call('HGET', KEYS[1], 'payload') or '', redis.call('HGET', KEYS[1], 'queue') or ''}
`))

// RenewLeases extends the leases of running attempts ("<id>:<fence>") by
// lease, one command per bucket in one pipeline; leases already taken over
// are not brought back.
func (s *Store) RenewLeases(ctx context.Context, members []string, lease time.Duration) error {
	if len(members) == 0 {
		return nil
	}
	byBucket := map[int][]string{}
	for _, m := range members {
		b := rkeys.Bucket(jobOf(m))
		byBucket[b] = append(byBucket[b], m)
	}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b, ms := range byBucket {
			// EVAL, not EVALSHA: see claimEach.
			renewLeases.Eval(ctx, p, []string{rkeys.Leases(b)}, argsJSON(renewArgs{Lease: lease.Milliseconds(), Keep: s.keep(), Members: ms}))
		}
		return nil
	})
	if err != nil {
		return unavailable("renew leases", err)
	}
	return nil
}

// jobOf is the job id of a lease member ("<id>:<fence>").
func jobOf(member string) string {
	id, _, _ := strings.Cut(member, ":")
	return id
}

// Lease is a running attempt whose lease expired.
type Lease struct {
	JobID string
	Fence int // the attempt's fence token
}

// ClaimExpired takes up to limit expired leases of each bucket; each is
// claimed by one caller for claimFor, after which, unless TakeOver removed
// it, it can be claimed again.
func (s *Store) ClaimExpired(ctx context.Context, limit int, claimFor time.Duration) ([]Lease, error) {
	raw, err := s.claimEach(ctx, claimDue, rkeys.Leases, claimArgs{Limit: limit, Claim: claimFor.Milliseconds()})
	if err != nil {
		return nil, unavailable("claim expired leases", err)
	}
	out := make([]Lease, 0, len(raw))
	for _, m := range raw {
		i := strings.LastIndexByte(m, ':')
		n, err := strconv.Atoi(m[i+1:])
		if i < 0 || err != nil {
			continue
		}
		out = append(out, Lease{JobID: m[:i], Fence: n})
	}
	return out, nil
}

// TakeOver hands a job whose attempt lost its lease to the new task id: it
// is queued again and the old attempt is fenced out. ok=false: the attempt
// had ended anyway. It returns what the new task needs.
func (s *Store) TakeOver(ctx context.Context, id string, attempt int, task string) (ok bool, payload []byte, queue string, err error) {
	res, err := takeOver.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Leases(rkeys.Bucket(id))},
		argsJSON(leaseArgs{Fence: attempt, Task: task, Member: rkeys.LeaseMember(id, attempt)})).Slice()
	if err != nil {
		return false, nil, "", unavailable("take over", err)
	}
	if n, err := intAt(res, 0, "take over"); err != nil || n != 1 {
		return false, nil, "", err
	}
	p, _ := res[1].(string)
	q, _ := res[2].(string)
	return true, []byte(p), q, nil
}

// claimEach runs a claim script on every bucket's index and returns what
// they claimed. On one Redis that is one script over the 64 indexes (an
// idle worker's rescuer and reconciler sent 96 scripts a second as one per
// bucket). On Redis Cluster the buckets lie in other slots: one script per
// bucket in one pipeline (one round trip per shard, in parallel), sent as
// EVAL, not EVALSHA: a pipeline cannot fall back on a script that a freshly
// promoted master has not cached.
func (s *Store) claimEach(ctx context.Context, script *redis.Script, key func(int) string, a claimArgs) ([]string, error) {
	args := argsJSON(a)
	if s.publish == "PUBLISH" {
		keys := make([]string, rkeys.Buckets)
		for b := range keys {
			keys[b] = key(b)
		}
		return script.Run(ctx, s.rdb, keys, args).StringSlice()
	}
	cmds := make([]*redis.Cmd, rkeys.Buckets)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b := range cmds {
			cmds[b] = script.Eval(ctx, p, []string{key(b)}, args)
		}
		return nil
	})
	var out []string
	for _, c := range cmds {
		raw, cerr := c.StringSlice()
		if cerr != nil {
			continue // reported through err; the other buckets' claims stand
		}
		out = append(out, raw...)
	}
	return out, err
}
