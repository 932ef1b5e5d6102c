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
)

// Job is a job record as the API shows it.
type Job struct {
	ID         string
	Tenant     string
	SessionID  string
	Queue      string
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
	Content  string `json:"content"`
	Degraded bool   `json:"degraded"`
	Provider string `json:"provider"`
	Model    string `json:"model"`
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
	Role      string    `json:"role"`
	Content   string    `json:"content"`
	JobID     string    `json:"job_id"`
	CreatedAt time.Time `json:"created_at"`
}

// Options sets retention and history bounds.
type Options struct {
	Retention          time.Duration
	HistoryMaxMessages int
	HistoryTTL         time.Duration
	// TenantMaxJobs bounds a tenant's unfinished jobs (0: no bound).
	TenantMaxJobs int
}

// Store reads and writes job records, session order, history and event logs.
type Store struct {
	rdb redis.UniversalClient
	opt Options
}

// New returns a Store on rdb (which it does not close).
func New(rdb redis.UniversalClient, opt Options) *Store {
	return &Store{rdb: rdb, opt: opt}
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
}

// Create writes a queued record and appends it to its session's order. When a
// record with the id exists it returns created=false and that record.
func (s *Store) Create(ctx context.Context, j NewJob) (created bool, existing Job, err error) {
	args := []any{j.ID, seconds(s.opt.Retention), s.opt.TenantMaxJobs, time.Now().UnixMilli(),
		"tenant", j.Tenant, "session_id", j.SessionID, "queue", j.Queue,
		"status", StatusQueued, "body_hash", j.BodyHash, "created_at", fmtTime(j.CreatedAt), "attempts", 0}
	res, err := createJob.Run(ctx, s.rdb, []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.TenantJobs(j.Tenant)}, args...).Slice()
	if err != nil {
		return false, Job{}, unavailable("create job", err)
	}
	switch res[0].(int64) {
	case 1:
		return true, Job{}, nil
	case -1:
		return false, Job{}, ErrTooManyJobs
	}
	existing, err = s.Get(ctx, j.ID)
	if errors.Is(err, ErrNotFound) {
		// Expired between the two calls: the caller may simply try again.
		return false, Job{}, unavailable("create job", errors.New("record vanished"))
	}
	return false, existing, err
}

// Delete removes a record that was created but could not be enqueued.
func (s *Store) Delete(ctx context.Context, j NewJob) error {
	err := deleteJob.Run(ctx, s.rdb, []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.TenantJobs(j.Tenant)}, j.ID).Err()
	if err != nil {
		return unavailable("delete job", err)
	}
	return nil
}

// Get reads a record.
func (s *Store) Get(ctx context.Context, id string) (Job, error) {
	m, err := s.rdb.HGetAll(ctx, rkeys.Job(id)).Result()
	if err != nil {
		return Job{}, unavailable("get job", err)
	}
	if len(m) == 0 {
		return Job{}, ErrNotFound
	}
	j := Job{
		ID: id, Tenant: m["tenant"], SessionID: m["session_id"], Queue: m["queue"],
		Status: m["status"], BodyHash: m["body_hash"],
		CreatedAt: parseTime(m["created_at"]), StartedAt: parseTime(m["started_at"]),
		FinishedAt: parseTime(m["finished_at"]),
	}
	j.Attempts, _ = strconv.Atoi(m["attempts"])
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
	N       int       // the attempt's number; 0: the job has finished, do not run it
	Head    string    // set when an earlier job of the session holds the turn; nothing was changed
	History []Message // the session's history, when asked for
	// BadHistory is set when history entries could not be decoded; History is then empty.
	BadHistory error
}

// StartAttempt checks the session's turn, marks the job active and reads the
// session's history in one round trip. ErrNotFound: the record is gone.
func (s *Store) StartAttempt(ctx context.Context, id, tenant, session string, withHistory bool) (Attempt, error) {
	flag := "0"
	if withHistory {
		flag = "1"
	}
	res, err := startAttempt.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.History(tenant, session)},
		id, fmtTime(time.Now()), flag).StringSlice()
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
	for _, raw := range res[2:] {
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
// its session's order. The caller then moves its asynq task back to pending.
func (s *Store) Requeue(ctx context.Context, j Job) error {
	n, err := requeue.Run(ctx, s.rdb, []string{rkeys.Job(j.ID), rkeys.SessionOrder(j.Tenant, j.SessionID), rkeys.TenantJobs(j.Tenant)},
		j.ID, seconds(s.opt.Retention), time.Now().UnixMilli()).Int()
	if err != nil {
		return unavailable("requeue", err)
	}
	if n == 0 {
		return ErrNotFailed
	}
	return nil
}

// MarkDeferred undoes StartAttempt for an attempt that never reached a
// provider (every breaker open, or no capacity): the job is queued again,
// keeps its attempts, and its record lives at least until the retention past
// `until`, when it runs again.
func (s *Store) MarkDeferred(ctx context.Context, id, tenant, session string, until time.Time) error {
	err := markDeferred.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session)}, s.holdFor(until)).Err()
	if err != nil {
		return unavailable("mark deferred", err)
	}
	return nil
}

// MarkRetrying records a failed attempt that asynq will retry no later than
// `until`; the record lives at least until the retention past it.
func (s *Store) MarkRetrying(ctx context.Context, id, tenant, session string, e JobError, until time.Time) error {
	b, _ := json.Marshal(e)
	err := markRetrying.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session)}, string(b), s.holdFor(until)).Err()
	if err != nil {
		return unavailable("mark retrying", err)
	}
	return nil
}

// Hold keeps a job that waits in the queue without starting an attempt alive
// until the retention past `until`.
func (s *Store) Hold(ctx context.Context, id, tenant, session string, until time.Time) error {
	if err := holdJob.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session)}, s.holdFor(until)).Err(); err != nil {
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
}

// Finish records a job's outcome exactly once, appends its final event (done,
// error or canceled) to the event log and releases its session's turn. It
// reports whether this call was the one that finished it.
func (s *Store) Finish(ctx context.Context, id, tenant, session string, o Outcome) (bool, error) {
	ev := finalEvent(o)
	body, err := json.Marshal(ev)
	if err != nil {
		return false, fmt.Errorf("encode %s event: %w", ev.EventType(), err)
	}
	args := []any{id, o.Status, fmtTime(time.Now()), seconds(s.opt.Retention),
		s.opt.HistoryMaxMessages, seconds(s.opt.HistoryTTL),
		jsonOrEmpty(o.Result), jsonOrEmpty(o.Usage), jsonOrEmpty(o.Error),
		ev.EventType(), string(body), rkeys.LiveChannel(id)}
	for _, m := range o.History {
		args = append(args, jsonOrEmpty(m))
	}
	keys := []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.History(tenant, session), rkeys.Events(id), rkeys.TenantJobs(tenant)}
	n, err := finish.Run(ctx, s.rdb, keys, args...).Int()
	if err != nil {
		return false, unavailable("finish job", err)
	}
	return n == 1, nil
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

// Release removes a job from its session's order (a record that is gone).
func (s *Store) Release(ctx context.Context, tenant, session, id string) error {
	if err := s.rdb.LRem(ctx, rkeys.SessionOrder(tenant, session), 0, id).Err(); err != nil {
		return unavailable("release turn", err)
	}
	return nil
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
