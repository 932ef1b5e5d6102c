package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/tasks"
)

// Job statuses.
const (
	StatusQueued    = "queued"
	StatusActive    = "active"
	StatusRetrying  = "retrying"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusCanceled  = "canceled"
)

// Terminal reports whether a status is final.
func Terminal(status string) bool {
	return status == StatusSucceeded || status == StatusFailed || status == StatusCanceled
}

var (
	// ErrNotFound is returned for a job that does not exist (or has expired).
	ErrNotFound = errors.New("job not found")
	// ErrTooManyJobs is returned when a tenant is at its limit of unfinished jobs.
	ErrTooManyJobs = errors.New("too many unfinished jobs")
	// ErrUnavailable wraps every failure to reach Redis; callers answer 503.
	ErrUnavailable = errors.New("redis unavailable")
	// ErrSuperseded is returned to an attempt whose job another attempt now
	// owns (it was taken over): it must stop and write nothing more.
	ErrSuperseded = errors.New("a later attempt owns the job")
)

// Job is a job record as the API shows it.
type Job struct {
	ID         string
	Tenant     string
	SessionID  string
	Queue      string
	Task       string // the asynq task that runs the job now (the job id, or a later task after a takeover)
	Status     string
	BodyHash   string
	CreatedAt  time.Time
	StartedAt  time.Time
	FinishedAt time.Time
	Attempts   int
	Result     *Result
	Usage      *Usage
	Error      *JobError
}

// Result is a finished job's reply.
type Result struct {
	Content      string           `json:"content"`
	ToolCalls    []tasks.ToolCall `json:"tool_calls,omitempty"`
	FinishReason string           `json:"finish_reason,omitempty"` // stop, length or tool_calls
	Degraded     bool             `json:"degraded"`
	Provider     string           `json:"provider"`
	Model        string           `json:"model"`
}

// Usage counts a job's tokens.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// JobError says why a job failed or why its last attempt failed.
type JobError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Message is one entry of a session's history.
type Message struct {
	Role       string           `json:"role"` // user, assistant or tool
	Content    string           `json:"content"`
	ToolCalls  []tasks.ToolCall `json:"tool_calls,omitempty"`   // an assistant's calls
	ToolCallID string           `json:"tool_call_id,omitempty"` // the call a tool message answers
	JobID      string           `json:"job_id"`
	CreatedAt  time.Time        `json:"created_at"`
}

// Options sets retention and history bounds.
type Options struct {
	Retention          time.Duration
	HistoryMaxMessages int
	HistoryTTL         time.Duration
	// TenantMaxJobs bounds a tenant's unfinished jobs (0: no bound).
	TenantMaxJobs int
	// Clock is this process's clock (default time.Now): it stamps records
	// and schedules the reconciler's checks. Leases never read it.
	Clock func() time.Time
}

// Store reads and writes job records, session order, history and event logs.
type Store struct {
	rdb     redis.UniversalClient
	opt     Options
	publish string // PUBLISH, or SPUBLISH on Redis Cluster
}

// New returns a Store on rdb (which it does not close). On a Redis Cluster
// client live events go out by sharded pub/sub.
func New(rdb redis.UniversalClient, opt Options) *Store {
	publish := "PUBLISH"
	if _, ok := rdb.(*redis.ClusterClient); ok {
		publish = "SPUBLISH"
	}
	if opt.Clock == nil {
		opt.Clock = time.Now
	}
	return &Store{rdb: rdb, opt: opt, publish: publish}
}

func unavailable(op string, err error) error {
	return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
}

// NewJob is what Create writes.
type NewJob struct {
	ID        string
	Tenant    string
	SessionID string
	Queue     string
	BodyHash  string
	CreatedAt time.Time
	Payload   []byte // the task payload
	// KeyHash names the Idempotency-Key the job was submitted with, if any
	// (tasks.IdempotencyKeyHash): the key stays bound to this job.
	KeyHash string
}

// ErrKeyReused is returned by Create for an Idempotency-Key that is bound to
// another job (it was used with another session).
var ErrKeyReused = errors.New("idempotency key bound to another job")

// FirstCheck is how long after its creation the reconciler first looks at an
// unfinished job: past the submit's own deadline for its enqueue.
const FirstCheck = 10 * time.Second

// Task is an asynq task as asynq's enqueue writes it (tasks.AsynqMessage and
// tasks.AsynqKeys).
type Task struct {
	Key, PendingKey, QueuesKey, Queue string
	Message                           []byte // asynq's encoded task message
}

// Create writes a queued record, appends it to its session's order and
// indexes it as unfinished. When a record with the id exists it returns
// created=false and that record. With a limit of unfinished jobs per tenant
// the job is counted first (ErrTooManyJobs at the limit): the tenant's count
// is a key of its own, outside the session's slot.
//
// A job behind an earlier unfinished job of its session waits for its turn
// (order.go): created with Waiting set, and no task is to be enqueued. Given
// the task of a job that holds the turn, on one Redis Create enqueues it in
// the same script (one round trip): Enqueued set. Otherwise (a cluster, where
// asynq's keys are in another slot, or a task with the id exists already, or
// no task given) the caller enqueues it.
func (s *Store) Create(ctx context.Context, j NewJob, t *Task) (c Created, existing Job, err error) {
	if j.KeyHash != "" {
		// The job id comes from the key and the session (the session's slot):
		// this binding tells the same key with another session apart.
		owner, err := bindKey.Run(ctx, s.rdb, []string{rkeys.Idempotency(j.Tenant, j.KeyHash)}, j.ID, 2*seconds(s.opt.Retention)).Text()
		if err != nil {
			return Created{}, Job{}, unavailable("bind idempotency key", err)
		}
		if owner != j.ID {
			return Created{}, Job{}, ErrKeyReused
		}
	}
	if s.opt.TenantMaxJobs > 0 {
		n, err := countTenantJob.Run(ctx, s.rdb, []string{rkeys.TenantJobs(j.Tenant)},
			j.ID, seconds(s.opt.Retention), s.opt.TenantMaxJobs, s.opt.Clock().UnixMilli()).Int()
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
	keys := []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.Unfinished(rkeys.Bucket(j.ID))}
	args := []any{j.ID, seconds(s.opt.Retention), s.opt.Clock().UnixMilli(), rkeys.UnfinishedMember(j.Tenant, j.SessionID, j.ID),
		FirstCheck.Milliseconds(), WaitingCheck.Milliseconds()}
	record := []any{"tenant", j.Tenant, "session_id", j.SessionID, "queue", j.Queue, "task", j.ID, "payload", string(j.Payload),
		"status", StatusQueued, "body_hash", j.BodyHash, "created_at", fmtTime(j.CreatedAt), "attempts", 0}
	n := -1
	if t != nil && s.publish == "PUBLISH" { // one Redis: the record and the task together
		n, err = createAndEnqueue.Run(ctx, s.rdb, append(keys, t.Key, t.PendingKey, t.QueuesKey),
			append(append(args, t.Message, s.opt.Clock().UnixNano(), t.Queue), record...)...).Int()
		c.Enqueued = n == 1
	}
	if n == -1 {
		n, err = createJob.Run(ctx, s.rdb, keys, append(args, record...)...).Int()
	}
	if err != nil {
		s.uncount(ctx, j.Tenant, j.ID)
		s.unbind(ctx, j)
		return Created{}, Job{}, unavailable("create job", err)
	}
	if n != 0 {
		return Created{New: true, Enqueued: c.Enqueued, Waiting: n == 2}, Job{}, nil
	}
	existing, err = s.Get(ctx, j.ID)
	if errors.Is(err, ErrNotFound) {
		// Expired between the two calls: the caller may simply try again.
		return Created{}, Job{}, unavailable("create job", errors.New("record vanished"))
	}
	if err == nil && Terminal(existing.Status) {
		s.uncount(ctx, j.Tenant, j.ID) // counted again above, but it has finished
	}
	return Created{}, existing, err
}

// Created is what Create did.
type Created struct {
	New      bool // a record was written (else the id existed)
	Enqueued bool // its task was enqueued with it
	Waiting  bool // it waits for its session's turn: no task yet
}

// unbind releases a job's Idempotency-Key binding when the job was not made.
// Best effort: a binding left behind expires with twice the retention.
func (s *Store) unbind(ctx context.Context, j NewJob) {
	if j.KeyHash != "" {
		_ = unbindKey.Run(context.WithoutCancel(ctx), s.rdb, []string{rkeys.Idempotency(j.Tenant, j.KeyHash)}, j.ID).Err()
	}
}

// uncount drops a job from its tenant's unfinished jobs. Best effort: an
// entry left behind leaves the count when its retention has passed.
func (s *Store) uncount(ctx context.Context, tenant, id string) {
	if s.opt.TenantMaxJobs > 0 {
		_ = s.rdb.ZRem(context.WithoutCancel(ctx), rkeys.TenantJobs(tenant), id).Err()
	}
}

// Delete removes a record that was created but could not be enqueued, and
// returns the job submitted behind it meanwhile, whose turn it now is.
func (s *Store) Delete(ctx context.Context, j NewJob) (*Next, error) {
	res, err := deleteJob.Run(ctx, s.rdb, []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.Unfinished(rkeys.Bucket(j.ID))},
		append([]any{j.ID, rkeys.UnfinishedMember(j.Tenant, j.SessionID, j.ID)}, s.releaseArgs(j.Tenant, j.SessionID, j.ID)...)...).Slice()
	if err != nil {
		return nil, unavailable("delete job", err)
	}
	s.uncount(ctx, j.Tenant, j.ID)
	s.unbind(ctx, j)
	if len(res) == 0 {
		return nil, nil
	}
	return nextOf(res[0]), nil
}

// Get reads a record.
func (s *Store) Get(ctx context.Context, id string) (Job, error) {
	// Not HGETALL: the record also keeps the task payload (a conversation can
	// be large), which only a re-enqueue needs (Payload).
	vals, err := s.rdb.HMGet(ctx, rkeys.Job(id), recordFields...).Result()
	if err != nil {
		return Job{}, unavailable("get job", err)
	}
	m := make(map[string]string, len(recordFields))
	for i, v := range vals {
		if str, ok := v.(string); ok {
			m[recordFields[i]] = str
		}
	}
	if len(m) == 0 {
		return Job{}, ErrNotFound
	}
	j := Job{
		ID: id, Tenant: m["tenant"], SessionID: m["session_id"], Queue: m["queue"],
		Task: m["task"], Status: m["status"], BodyHash: m["body_hash"],
		CreatedAt: parseTime(m["created_at"]), StartedAt: parseTime(m["started_at"]),
		FinishedAt: parseTime(m["finished_at"]),
	}
	j.Attempts, _ = strconv.Atoi(m["attempts"])
	if j.Task == "" {
		j.Task = id
	}
	if err := unmarshalField(m, "result", &j.Result); err != nil {
		return Job{}, err
	}
	if err := unmarshalField(m, "usage", &j.Usage); err != nil {
		return Job{}, err
	}
	if err := unmarshalField(m, "error", &j.Error); err != nil {
		return Job{}, err
	}
	return j, nil
}

// recordFields are the fields Get reads.
var recordFields = []string{"tenant", "session_id", "queue", "task", "status", "body_hash",
	"created_at", "started_at", "finished_at", "attempts", "result", "usage", "error"}

// Payload returns the task payload an unfinished job's record keeps (nil
// once the job has finished, or for a record without one).
func (s *Store) Payload(ctx context.Context, id string) ([]byte, error) {
	b, err := s.rdb.HGet(ctx, rkeys.Job(id), "payload").Bytes()
	if errors.Is(err, redis.Nil) || (err == nil && len(b) == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable("get payload", err)
	}
	return b, nil
}

func unmarshalField[T any](m map[string]string, field string, dst **T) error {
	raw, ok := m[field]
	if !ok || raw == "" {
		return nil
	}
	var v T
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		return fmt.Errorf("job record field %s: %w", field, err)
	}
	*dst = &v
	return nil
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
}

// StartAttempt checks the session's turn, marks the job active, takes the
// attempt's lease (until now + lease) and reads the session's history in one
// round trip. task is the asynq task running it: a task that no longer owns
// the job (it was taken over) gets N = 0; fresh is the task id the job waits
// under when it is not its turn yet. ErrNotFound: the record is gone.
func (s *Store) StartAttempt(ctx context.Context, id, tenant, session, task, fresh string, withHistory bool, lease time.Duration) (Attempt, error) {
	flag := "0"
	if withHistory {
		flag = "1"
	}
	res, err := startAttempt.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.History(tenant, session), rkeys.Leases(rkeys.Bucket(id))},
		id, fmtTime(s.opt.Clock()), flag, task, lease.Milliseconds(), fresh).StringSlice()
	if err != nil {
		return Attempt{}, unavailable("start attempt", err)
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
	for _, raw := range res[3:] {
		var m Message
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			a.History, a.BadHistory = nil, fmt.Errorf("history entry: %w", err)
			break
		}
		a.History = append(a.History, m)
	}
	return a, nil
}

// ErrNotFailed is returned when re-running a job that has not failed.
var ErrNotFailed = errors.New("only a failed job can be re-run")

// Requeue reopens a failed job: queued again, attempts reset, at the end of
// its session's order. It reports whether the job holds its session's turn:
// then the caller enqueues its task; else the release that gives it the turn
// returns it.
func (s *Store) Requeue(ctx context.Context, j Job, payload []byte) (head bool, err error) {
	n, err := requeue.Run(ctx, s.rdb, []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.Unfinished(rkeys.Bucket(j.ID))},
		j.ID, seconds(s.opt.Retention), s.opt.Clock().UnixMilli(), rkeys.UnfinishedMember(j.Tenant, j.SessionID, j.ID), string(payload),
		FirstCheck.Milliseconds(), WaitingCheck.Milliseconds()).Int()
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
	}
	return n == 1, nil
}

// MarkDeferred undoes StartAttempt for an attempt that never reached a
// provider (every breaker open, or no capacity): the job is queued again,
// keeps its attempts, and its record lives at least until the retention past
// `until`, when it runs again.
func (s *Store) MarkDeferred(ctx context.Context, id, tenant, session string, attempt int, until time.Time) error {
	err := markDeferred.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.Leases(rkeys.Bucket(id)), rkeys.Events(id)},
		s.holdFor(until), attempt, rkeys.LeaseMember(id, attempt)).Err()
	if err != nil {
		return unavailable("mark deferred", err)
	}
	return nil
}

// MarkRetrying records a failed attempt that asynq will retry no later than
// `until`; the record lives at least until the retention past it.
func (s *Store) MarkRetrying(ctx context.Context, id, tenant, session string, attempt int, e JobError, until time.Time) error {
	b, _ := json.Marshal(e)
	err := markRetrying.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.Leases(rkeys.Bucket(id)), rkeys.Events(id)},
		string(b), s.holdFor(until), attempt, rkeys.LeaseMember(id, attempt)).Err()
	if err != nil {
		return unavailable("mark retrying", err)
	}
	return nil
}

// Hold keeps a job that waits in the queue without starting an attempt alive
// until the retention past `until`.
func (s *Store) Hold(ctx context.Context, id, tenant, session string, until time.Time) error {
	if err := holdJob.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.Events(id)}, s.holdFor(until)).Err(); err != nil {
		return unavailable("hold job", err)
	}
	return nil
}

func (s *Store) holdFor(until time.Time) int64 {
	return seconds(max(time.Until(until), 0) + s.opt.Retention)
}

// Outcome is how a job ended.
type Outcome struct {
	Status  string // succeeded, failed or canceled
	Result  *Result
	Usage   *Usage
	Error   *JobError
	History []Message // appended to the session's history with the outcome
	// Tail is the end of the reply that had not gone out as token events
	// yet: appended as one token event just before the final one, in the
	// same script (a fast reply's last batch costs no round trip).
	Tail string
}

// Finish records a job's outcome exactly once, appends its final event (done,
// error or canceled) to the event log and releases its session's turn. It
// reports whether this call was the one that finished it, and the session's
// next job when this gave it the turn (its task is to be enqueued now).
// attempt > 0 fences it: it applies only while that attempt owns the job; 0
// is for the lifecycle's own ends (cancel, reconcile).
func (s *Store) Finish(ctx context.Context, id, tenant, session string, attempt int, o Outcome) (bool, *Next, error) {
	ev := finalEvent(o)
	body, err := json.Marshal(ev)
	if err != nil {
		return false, nil, fmt.Errorf("encode %s event: %w", ev.EventType(), err)
	}
	args := []any{id, o.Status, fmtTime(s.opt.Clock()), seconds(s.opt.Retention),
		s.opt.HistoryMaxMessages, seconds(s.opt.HistoryTTL),
		jsonOrEmpty(o.Result), jsonOrEmpty(o.Usage), jsonOrEmpty(o.Error),
		ev.EventType(), string(body), rkeys.LiveChannel(id), attempt, rkeys.UnfinishedMember(tenant, session, id), s.publish, ""}
	if o.Tail != "" {
		tail, err := json.Marshal(TokenEvent{Delta: o.Tail})
		if err != nil {
			return false, nil, fmt.Errorf("encode token event: %w", err)
		}
		args[len(args)-1] = string(tail)
	}
	args = append(args, s.releaseArgs(tenant, session, id)...)
	for _, m := range o.History {
		args = append(args, jsonOrEmpty(m))
	}
	keys := []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.History(tenant, session), rkeys.Events(id),
		rkeys.Leases(rkeys.Bucket(id)), rkeys.Unfinished(rkeys.Bucket(id))}
	res, err := finish.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return false, nil, unavailable("finish job", err)
	}
	n, _ := res[0].(int64)
	if n != 0 {
		s.uncount(ctx, tenant, id)
	}
	var next *Next
	if len(res) > 1 {
		next = nextOf(res[1])
	}
	return n == 1, next, nil
}

// Abandon ends an attempt cut short by a shutdown: its lease expires at once,
// so that a rescuer takes the job over now rather than after the lease.
func (s *Store) Abandon(ctx context.Context, id string, attempt int) error {
	if err := abandon.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Leases(rkeys.Bucket(id))}, attempt, rkeys.LeaseMember(id, attempt)).Err(); err != nil {
		return unavailable("abandon attempt", err)
	}
	return nil
}

// RenewLeases extends the leases of running attempts ("<id>:<fence>") by
// lease, one command per bucket in one pipeline; leases already taken over
// are not brought back.
func (s *Store) RenewLeases(ctx context.Context, members []string, lease time.Duration) error {
	if len(members) == 0 {
		return nil
	}
	byBucket := map[int][]any{}
	for _, m := range members {
		b := rkeys.Bucket(jobOf(m))
		byBucket[b] = append(byBucket[b], m)
	}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b, ms := range byBucket {
			// EVAL, not EVALSHA: see claimEach.
			renewLeases.Eval(ctx, p, []string{rkeys.Leases(b)}, append([]any{lease.Milliseconds()}, ms...)...)
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
	raw, err := s.claimEach(ctx, claimDue, rkeys.Leases, limit, claimFor.Milliseconds())
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
	res, err := takeOver.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Leases(rkeys.Bucket(id))}, attempt, task, rkeys.LeaseMember(id, attempt)).Slice()
	if err != nil {
		return false, nil, "", unavailable("take over", err)
	}
	if res[0].(int64) != 1 {
		return false, nil, "", nil
	}
	p, _ := res[1].(string)
	q, _ := res[2].(string)
	return true, []byte(p), q, nil
}

// Retask points a queued or retrying job at a new task; false when the job
// is in another state.
func (s *Store) Retask(ctx context.Context, id, task string) (bool, error) {
	n, err := retask.Run(ctx, s.rdb, []string{rkeys.Job(id)}, task).Int()
	if err != nil {
		return false, unavailable("retask", err)
	}
	return n == 1, nil
}

// Unfinished is an entry of the reconciler's index.
type Unfinished struct {
	Tenant, SessionID, ID string
}

// ClaimDue takes up to limit unfinished jobs of each bucket whose check is
// due; their next check moves claimFor ahead, so that one reconciler handles
// each.
func (s *Store) ClaimDue(ctx context.Context, limit int, claimFor time.Duration) ([]Unfinished, error) {
	raw, err := s.claimEach(ctx, claimDue, rkeys.Unfinished, limit, claimFor.Milliseconds())
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

// claimEach runs a claim script on every bucket's index in one pipeline (on
// Redis Cluster, one round trip per shard, in parallel) and returns what
// they claimed. EVAL, not EVALSHA: a pipeline cannot fall back on a script
// that a freshly promoted master has not cached.
func (s *Store) claimEach(ctx context.Context, script *redis.Script, key func(int) string, args ...any) ([]string, error) {
	cmds := make([]*redis.Cmd, rkeys.Buckets)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b := range cmds {
			cmds[b] = script.Eval(ctx, p, []string{key(b)}, args...)
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

// CheckAt sets when the reconciler looks at an unfinished job next.
func (s *Store) CheckAt(ctx context.Context, u Unfinished, at time.Time) error {
	err := s.rdb.ZAddXX(ctx, rkeys.Unfinished(rkeys.Bucket(u.ID)), redis.Z{Score: float64(at.UnixMilli()), Member: rkeys.UnfinishedMember(u.Tenant, u.SessionID, u.ID)}).Err()
	if err != nil {
		return unavailable("schedule check", err)
	}
	return nil
}

// History returns a session's conversation, oldest first.
func (s *Store) History(ctx context.Context, tenant, session string) ([]Message, error) {
	raw, err := s.rdb.LRange(ctx, rkeys.History(tenant, session), 0, -1).Result()
	if err != nil {
		return nil, unavailable("read history", err)
	}
	out := make([]Message, 0, len(raw))
	for _, r := range raw {
		var m Message
		if err := json.Unmarshal([]byte(r), &m); err != nil {
			return nil, fmt.Errorf("history entry: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

func jsonOrEmpty(v any) string {
	switch x := v.(type) {
	case *Result:
		if x == nil {
			return ""
		}
	case *Usage:
		if x == nil {
			return ""
		}
	case *JobError:
		if x == nil {
			return ""
		}
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func seconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}
