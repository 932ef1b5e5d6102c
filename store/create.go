package store

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// createJobLua: create_job(a, fields) writes a new record from fields
// (field/value pairs), appends the job to its session's order and indexes it for the
// reconciler. It returns true when the job holds its session's turn: only
// then does its task go to the queue; a job behind others waits for its turn
// (order.go), its check far off (the release that gives it the turn brings
// it forward). It is listed in its tenant's listing of the bucket (the job
// list), whose entries older than the retention go. The record, the order
// and the index are kept for Store.keep, as long as the job is unfinished
// (the reconciler's visits extend it; finish sets the retention).
// KEYS: job, order, unfinished, listing. a: createArgs.
const createJobLua = extendLua + `
local job, order, unfinished, listing = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function create_job(a, fields)
  local id, retention, now, member = a.id, a.retention, a.now, a.member
  local first_check, waiting_check, keep = a.first_check, a.waiting_check, a.keep
  redis.call('HSET', job, unpack(fields))
  redis.call('EXPIRE', job, keep)
  local head = redis.call('RPUSH', order, id) == 1
  extend(order, keep)
  redis.call('ZADD', unfinished, now + (head and first_check or waiting_check), member)
  extend(unfinished, keep)
  redis.call('ZREMRANGEBYSCORE', listing, '-inf', now - retention * 1000)
  redis.call('ZADD', listing, now, id)
  redis.call('EXPIRE', listing, retention)
  return head
end
`

// createArgs are createJobLua's arguments.
type createArgs struct {
	ID           string `json:"id"`
	Retention    int64  `json:"retention"` // s
	Now          int64  `json:"now"`       // ms
	Member       string `json:"member"`
	FirstCheck   int64  `json:"first_check"`   // ms
	WaitingCheck int64  `json:"waiting_check"` // ms
	Keep         int64  `json:"keep"`          // s, Store.keep
	// Sched schedules the job in the same step (createAndSchedule).
	Sched *schedArgs `json:"sched,omitempty"`
}

// createJob writes a new record (createJobLua). Returns 1 when the job holds
// its session's turn, 2 when it waits behind an earlier job, 0 when the
// record exists.
// ARGV[1]: createArgs JSON; ARGV[2..]: the record's field/value pairs.
var createJob = redis.NewScript(lua(createJobLua, `
local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', job) == 1 then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
if create_job(a, fields) then return 1 end
return 2
`))

// createAndSchedule writes a new record as createJob does and, when the job
// holds its session's turn, schedules it in the same step (on one Redis: the
// scheduler's keys are in another slot on a cluster). Returns 3 (created and
// scheduled), 2 (created, waiting for its turn) or 0 (the record exists).
// KEYS: job, order, unfinished, listing, the scheduler's jobs.
// ARGV[1]: createArgs JSON with Sched; ARGV[2..]: the record's field/value pairs.
var createAndSchedule = redis.NewScript(lua(createJobLua, schedLua, scheduleLua, `
local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', job) == 1 then return 0 end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
if not create_job(a, fields) then return 2 end
schedule(a.sched)
return 3
`))

// countTenantJob counts a job among its tenant's unfinished jobs, or returns
// 0 when the tenant is at its limit. A job already counted is admitted again.
// KEYS: tenant jobs. ARGV[1]: tenantJobArgs JSON.
var countTenantJob = redis.NewScript(`
local a = cjson.decode(ARGV[1])
local id, retention, limit, now = a.id, a.retention, a.limit, a.now
-- entries older than the retention belong to jobs whose records expired
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retention * 1000)
if redis.call('ZSCORE', KEYS[1], id) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now, id)
redis.call('EXPIRE', KEYS[1], retention)
return 1
`)

// tenantJobArgs are countTenantJob's arguments.
type tenantJobArgs struct {
	ID        string `json:"id"`
	Retention int64  `json:"retention"` // s
	Limit     int    `json:"limit"`     // unfinished jobs at most
	Now       int64  `json:"now"`       // ms
}

// deleteJob undoes createJob when the enqueue that follows it fails. A job
// submitted behind it meanwhile gets the turn: returned as releaseLua does.
// KEYS: job, order, unfinished, listing. ARGV[1]: unfinishedArgs JSON.
var deleteJob = redis.NewScript(lua(releaseLua, `
local a = cjson.decode(ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], a.member)
redis.call('ZREM', KEYS[4], a.release.id)
return {release(KEYS[2], KEYS[3], a.release)}
`))

// NewJob is what Create writes.
type NewJob struct {
	ID        string
	Tenant    string
	SessionID string
	Queue     string
	BodyHash  string
	CreatedAt time.Time
	Payload   []byte // the task payload
	// Body is the payload the job was submitted with when its task carries
	// the body by reference (tasks.ChatPayload.Body); nil otherwise.
	Body []byte
	// Model is the public model the job asks for (the default's name when
	// the request names none): the scheduler's capacity is per model.
	Model string
	// Schedule, when set, is the job's place in the scheduler: on one Redis
	// a job that holds its session's turn is scheduled with its record
	// (Created.Scheduled); otherwise the caller schedules it.
	Schedule *Scheduled
	// KeyHash names the Idempotency-Key the job was submitted with, if any
	// (tasks.IdempotencyKeyHash): the key stays bound to this job.
	KeyHash string
	// Webhook says what to call back when the job ends (JSON, webhooks.Spec);
	// empty: nothing.
	Webhook string
	// TraceID is the job's trace, when tracing is on.
	TraceID string
	// Batch names the batch whose line the job is (the Batch API): its
	// usage is counted in the ledger's batch part too.
	Batch string
	// BudgetPeriod names the period of its tenant's budget that the job
	// reserved its cost in (Store.Reserve); empty: no budget.
	BudgetPeriod string
}

// ErrKeyReused is returned by Create for an Idempotency-Key that is bound to
// another job (it was used with another session).
var ErrKeyReused = errors.New("idempotency key bound to another job")

// FirstCheck is how long after its creation the reconciler first looks at an
// unfinished job: past the submit's own deadline for its enqueue.
const FirstCheck = 10 * time.Second

// Create writes a queued record, appends it to its session's order and
// indexes it as unfinished. When a record with the id exists it returns
// created=false and that record. With a limit of unfinished jobs per tenant
// the job is counted first (ErrTooManyJobs at the limit): the tenant's count
// is a key of its own, outside the session's slot.
//
// A job behind an earlier unfinished job of its session waits for its turn
// (order.go): created with Waiting set. A job that holds the turn goes to the
// scheduler next (Schedule, by the caller: its keys are in another slot).
func (s *Store) Create(ctx context.Context, j NewJob) (c Created, existing Job, err error) {
	if j.KeyHash != "" {
		// The job id comes from the key and the session (the session's slot):
		// this binding tells the same key with another session apart.
		owner, err := bindKey.Run(ctx, s.rdb, []string{rkeys.Idempotency(j.Tenant, j.KeyHash)},
			argsJSON(bindArgs{ID: j.ID, TTL: 2 * seconds(s.opt.Retention)})).Text()
		if err != nil {
			return Created{}, Job{}, unavailable("bind idempotency key", err)
		}
		if owner != j.ID {
			return Created{}, Job{}, ErrKeyReused
		}
	}
	if s.opt.TenantMaxJobs > 0 {
		n, err := countTenantJob.Run(ctx, s.rdb, []string{rkeys.TenantJobs(j.Tenant)},
			argsJSON(tenantJobArgs{ID: j.ID, Retention: seconds(s.opt.Retention), Limit: s.opt.TenantMaxJobs, Now: s.opt.Clock().UnixMilli()})).Int()
		if err != nil {
			return Created{}, Job{}, unavailable("count tenant job", err)
		}
		if n == 0 {
			// At the limit, a replay of a finished job is still a replay.
			if existing, err = s.Get(ctx, j.ID); errors.Is(err, ErrNotFound) {
				s.unbind(ctx, j)
				return Created{}, Job{}, ErrTooManyJobs
			}
			return Created{}, existing, err
		}
	}
	keys := []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.Unfinished(rkeys.Bucket(j.ID)),
		rkeys.Listing(rkeys.Bucket(j.ID), j.Tenant)}
	now := s.opt.Clock()
	if !j.CreatedAt.IsZero() {
		now = j.CreatedAt // the job list's order is the records' created_at
	}
	args := createArgs{ID: j.ID, Retention: seconds(s.opt.Retention), Now: now.UnixMilli(), Member: rkeys.UnfinishedMember(j.Tenant, j.SessionID, j.ID),
		FirstCheck: FirstCheck.Milliseconds(), WaitingCheck: WaitingCheck.Milliseconds(), Keep: s.keep()}
	record := []any{"tenant", j.Tenant, "session_id", j.SessionID, "queue", j.Queue, "task", j.ID, "payload", j.Payload,
		"status", StatusQueued, "body_hash", j.BodyHash, "created_at", fmtTime(j.CreatedAt), "attempts", 0}
	if s.opt.TenantMaxJobs > 0 {
		// Whoever finishes the job uncounts it, whatever its own settings.
		record = append(record, "counted", 1)
	}
	if len(j.Body) > 0 {
		record = append(record, "body", j.Body)
	}
	if j.Webhook != "" {
		record = append(record, "webhook", j.Webhook)
	}
	if j.TraceID != "" {
		record = append(record, "trace_id", j.TraceID)
	}
	if j.Batch != "" {
		record = append(record, "batch", j.Batch)
	}
	if j.BudgetPeriod != "" {
		record = append(record, "budget", j.BudgetPeriod)
	}
	if j.Model != "" {
		record = append(record, "model", j.Model)
	}
	script := createJob
	if j.Schedule != nil && s.publish == "PUBLISH" { // one Redis: the record and its place in the scheduler together
		script, keys = createAndSchedule, append(keys, rkeys.SchedJobs())
		args.Sched = s.schedArgsOf(*j.Schedule, time.Time{}, 0)
	}
	n, err := script.Run(ctx, s.rdb, keys, append([]any{argsJSON(args)}, record...)...).Int()
	if err != nil {
		if s.opt.TenantMaxJobs > 0 {
			s.uncount(ctx, j.Tenant, j.ID)
		}
		s.unbind(ctx, j)
		return Created{}, Job{}, unavailable("create job", err)
	}
	if n != 0 {
		return Created{New: true, Waiting: n == 2, Scheduled: n == 3}, Job{}, nil
	}
	existing, err = s.Get(ctx, j.ID)
	if errors.Is(err, ErrNotFound) {
		// Expired between the two calls: the caller may simply try again.
		return Created{}, Job{}, unavailable("create job", errors.New("record vanished"))
	}
	if err == nil && Terminal(existing.Status) && s.opt.TenantMaxJobs > 0 {
		s.uncount(ctx, j.Tenant, j.ID) // counted again above, but it has finished
	}
	return Created{}, existing, err
}

// Created is what Create did.
type Created struct {
	New       bool // a record was written (else the id existed)
	Waiting   bool // it waits for its session's turn: not scheduled yet
	Scheduled bool // it holds the turn and was scheduled with the record
}

// uncount drops a job from its tenant's unfinished jobs. Best effort: an
// entry left behind leaves the count when its retention has passed.
func (s *Store) uncount(ctx context.Context, tenant, id string) {
	_ = s.rdb.ZRem(context.WithoutCancel(ctx), rkeys.TenantJobs(tenant), id).Err()
}

// Delete removes a record that was created but could not be enqueued, and
// returns the job submitted behind it meanwhile, whose turn it now is.
func (s *Store) Delete(ctx context.Context, j NewJob) (*Next, error) {
	res, err := deleteJob.Run(ctx, s.rdb, []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.Unfinished(rkeys.Bucket(j.ID)),
		rkeys.Listing(rkeys.Bucket(j.ID), j.Tenant)},
		argsJSON(unfinishedArgs{Member: rkeys.UnfinishedMember(j.Tenant, j.SessionID, j.ID), Release: s.releaseArgs(j.Tenant, j.SessionID, j.ID)})).Slice()
	if err != nil {
		return nil, unavailable("delete job", err)
	}
	if s.opt.TenantMaxJobs > 0 {
		s.uncount(ctx, j.Tenant, j.ID)
	}
	s.unbind(ctx, j)
	if len(res) == 0 {
		return nil, nil
	}
	return nextOf(res[0]), nil
}
