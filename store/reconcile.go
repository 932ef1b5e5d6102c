package store

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// The reconciler's index: every unfinished job is a member
// "<tenant>\n<session>\n<id>" of its bucket's unfinished set, scored with
// when the reconciler looks at it next (jobs.Manager.Supervise).

// retask points a queued job at a new task (its old one was lost or finished).
// KEYS: job. ARGV[1]: retaskArgs JSON. Returns 0 unless the job is queued or retrying.
var retask = redis.NewScript(lua(statusLua, `
local a = cjson.decode(ARGV[1])
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= QUEUED and st ~= RETRYING then return 0 end
redis.call('HSET', KEYS[1], 'task', a.task)
return 1
`))

// retaskArgs are retask's arguments.
type retaskArgs struct {
	Task string `json:"task"`
}

// requeue reopens a failed job for another run: it is queued again at the
// end of its session's order, indexed as unfinished again, its times of the
// last run (started, finished, given the turn) cleared and its keys kept as
// an unfinished job's (Store.keep). Returns 0 when the job has not failed, 1
// when it holds its session's turn (its task is to be enqueued now), 2 when
// it waits behind an earlier job.
// KEYS: job, order, unfinished. ARGV[1]: requeueArgs JSON.
var requeue = redis.NewScript(lua(statusLua, extendLua, `
local a = cjson.decode(ARGV[1])
local job, order, unfinished = KEYS[1], KEYS[2], KEYS[3]
local id, keep, now, member, payload = a.id, a.keep, a.now, a.member, a.payload
local first_check, waiting_check = a.first_check, a.waiting_check
if redis.call('HGET', job, 'status') ~= FAILED then return 0 end
redis.call('HSET', job, 'payload', payload, 'status', QUEUED, 'attempts', 0)
redis.call('HDEL', job, 'error', 'finished_at', 'started_at', 'turn_at')
redis.call('EXPIRE', job, keep)
local head = redis.call('RPUSH', order, id) == 1
extend(order, keep)
redis.call('ZADD', unfinished, now + (head and first_check or waiting_check), member)
extend(unfinished, keep)
if head then return 1 end
return 2
`))

// requeueArgs are requeue's arguments.
type requeueArgs struct {
	ID           string `json:"id"`
	Keep         int64  `json:"keep"` // s, Store.keep
	Now          int64  `json:"now"`  // ms
	Member       string `json:"member"`
	Payload      string `json:"payload"`       // what the job's task carries now
	FirstCheck   int64  `json:"first_check"`   // ms
	WaitingCheck int64  `json:"waiting_check"` // ms
}

// Unfinished is an entry of the reconciler's index.
type Unfinished struct {
	Tenant, SessionID, ID string
}

// ClaimDue takes up to limit unfinished jobs of each bucket whose check is
// due; their next check moves claimFor ahead, so that one reconciler handles
// each.
func (s *Store) ClaimDue(ctx context.Context, limit int, claimFor time.Duration) ([]Unfinished, error) {
	raw, err := s.claimEach(ctx, claimDue, rkeys.Unfinished, claimArgs{Limit: limit, Claim: claimFor.Milliseconds()})
	if err != nil {
		return nil, unavailable("claim due jobs", err)
	}
	out := make([]Unfinished, 0, len(raw))
	for _, m := range raw {
		parts := strings.SplitN(m, "\n", 3)
		if len(parts) == 3 {
			out = append(out, Unfinished{Tenant: parts[0], SessionID: parts[1], ID: parts[2]})
		}
	}
	return out, nil
}

// checkAt sets an unfinished job's next check and keeps it alive
// (keepAliveLua). KEYS: order, unfinished, job, events. ARGV[1]:
// keepAliveArgs JSON (member, check, keep).
var checkAt = redis.NewScript(lua(holdLua, extendLua, keepAliveLua, `
local a = cjson.decode(ARGV[1])
keep_alive(KEYS[1], KEYS[2], KEYS[3], KEYS[4], a.member, a.check, a.keep)
return 1
`))

// CheckAt sets when the reconciler looks at an unfinished job next, and
// keeps the job's keys for Store.keep from now.
func (s *Store) CheckAt(ctx context.Context, u Unfinished, at time.Time) error {
	err := checkAt.Run(ctx, s.rdb, s.unfinishedKeys(u),
		argsJSON(keepAliveArgs{Member: rkeys.UnfinishedMember(u.Tenant, u.SessionID, u.ID), Check: at.UnixMilli(), Keep: s.keep()})).Err()
	if err != nil {
		return unavailable("schedule check", err)
	}
	return nil
}

// Retask points a queued or retrying job at a new task; false when the job
// is in another state.
func (s *Store) Retask(ctx context.Context, id, task string) (bool, error) {
	n, err := retask.Run(ctx, s.rdb, []string{rkeys.Job(id)}, argsJSON(retaskArgs{Task: task})).Int()
	if err != nil {
		return false, unavailable("retask", err)
	}
	return n == 1, nil
}

// ErrNotFailed is returned when re-running a job that has not failed.
var ErrNotFailed = errors.New("only a failed job can be re-run")

// Requeue reopens a failed job: queued again, attempts reset, at the end of
// its session's order; payload is what its task carries now. It reports whether the job holds its session's turn:
// then the caller enqueues its task; else the release that gives it the turn
// returns it.
func (s *Store) Requeue(ctx context.Context, j Job, payload []byte) (head bool, err error) {
	n, err := requeue.Run(ctx, s.rdb, []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.Unfinished(rkeys.Bucket(j.ID))},
		argsJSON(requeueArgs{ID: j.ID, Keep: s.keep(), Now: s.opt.Clock().UnixMilli(), Member: rkeys.UnfinishedMember(j.Tenant, j.SessionID, j.ID),
			Payload: string(payload), FirstCheck: FirstCheck.Milliseconds(), WaitingCheck: WaitingCheck.Milliseconds()})).Int()
	if err != nil {
		return false, unavailable("requeue", err)
	}
	if n == 0 {
		return false, ErrNotFailed
	}
	if s.opt.TenantMaxJobs > 0 { // counted again, past the limit: a re-run is an operator's decision
		if err := s.rdb.ZAdd(ctx, rkeys.TenantJobs(j.Tenant), redis.Z{Score: float64(s.opt.Clock().UnixMilli()), Member: j.ID}).Err(); err != nil {
			return false, unavailable("requeue", err)
		}
		if err := s.rdb.HSet(ctx, rkeys.Job(j.ID), "counted", 1).Err(); err != nil {
			return false, unavailable("requeue", err)
		}
	}
	return n == 1, nil
}
