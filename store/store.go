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
	Model      string // the public model it asks for, as submitted ("" from releases before the scheduler)
	Status     string
	BodyHash   string
	CreatedAt  time.Time
	StartedAt  time.Time
	TurnAt     time.Time // when its session's turn came, for a job that waited behind another
	FinishedAt time.Time
	Attempts   int
	Result     *Result
	Usage      *Usage
	Error      *JobError
	// Webhook is what to call back when the job ends (JSON; empty: nothing),
	// Deliveries how each callback went (JSON object by target; empty: none yet).
	Webhook, Deliveries string
	TraceID             string // the job's trace, when tracing is on
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
	// UsageRetention is how long the usage ledger keeps a month (default 90
	// days, counted from the month's last job).
	UsageRetention time.Duration
	// Clock is this process's clock (default time.Now): it stamps records
	// and schedules the reconciler's checks. Leases never read it.
	Clock func() time.Time
	// Runner names this process in the records of the attempts it starts,
	// so that a follower's arrival can be told to it (Wake).
	Runner string
}

// Store reads and writes job records, session order, history and event logs.
type Store struct {
	rdb     redis.UniversalClient
	opt     Options
	publish string // PUBLISH, or SPUBLISH on Redis Cluster
	ahead   *aheadWriter
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
	return &Store{rdb: rdb, opt: opt, publish: publish, ahead: &aheadWriter{}}
}

func unavailable(op string, err error) error {
	return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
}

// Get reads a record.
func (s *Store) Get(ctx context.Context, id string) (Job, error) {
	// Not HGETALL: the record also keeps the task payload (a conversation can
	// be large), which only a re-enqueue needs (Payload).
	vals, err := s.rdb.HMGet(ctx, rkeys.Job(id), recordFields...).Result()
	if err != nil {
		return Job{}, unavailable("get job", err)
	}
	return parseRecord(id, vals)
}

// parseRecord reads a record from the values of recordFields.
func parseRecord(id string, vals []any) (Job, error) {
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
		Task: m["task"], Model: m["model"], Status: m["status"], BodyHash: m["body_hash"],
		CreatedAt: parseTime(m["created_at"]), StartedAt: parseTime(m["started_at"]), TurnAt: parseMillis(m["turn_at"]),
		FinishedAt: parseTime(m["finished_at"]), Webhook: m["webhook"], Deliveries: m["deliveries"], TraceID: m["trace_id"],
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
	"created_at", "started_at", "finished_at", "attempts", "result", "usage", "error", "webhook", "deliveries", "trace_id"}

// Body returns the payload an unfinished job was submitted with when its
// task carries the body by reference (nil when the record has none: the
// job finished, or its task carries it all).
func (s *Store) Body(ctx context.Context, id string) ([]byte, error) {
	return s.recordBytes(ctx, id, "body")
}

// Payload returns the task payload an unfinished job's record keeps (nil
// once the job has finished, or for a record without one).
func (s *Store) Payload(ctx context.Context, id string) ([]byte, error) {
	return s.recordBytes(ctx, id, "payload")
}

// recordBytes reads a field of a job's record; nil when absent or empty.
func (s *Store) recordBytes(ctx context.Context, id, field string) ([]byte, error) {
	b, err := s.rdb.HGet(ctx, rkeys.Job(id), field).Bytes()
	if errors.Is(err, redis.Nil) || (err == nil && len(b) == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable("get "+field, err)
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

func parseMillis(s string) time.Time {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}
