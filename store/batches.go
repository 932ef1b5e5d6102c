package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Batches of the Batch API (/v1/batches). A batch's record holds its
// object's fields and counts; while it runs, its lines that are jobs now
// and its answered lines are hashes beside it (rkeys.BatchRunning,
// rkeys.BatchResults), and it is in the fleet's set of active batches, which
// the API processes run (api/batchrun.go).

// ErrBatchNotFound: the tenant has no such batch.
var ErrBatchNotFound = errors.New("batch not found")

// Batch statuses (OpenAI's).
const (
	BatchValidating = "validating"
	BatchFailed     = "failed"
	BatchInProgress = "in_progress"
	BatchFinalizing = "finalizing"
	BatchCompleted  = "completed"
	BatchExpired    = "expired"
	BatchCancelling = "cancelling"
	BatchCancelled  = "cancelled"
)

// Batch is a batch's record. Times are zero until they happen.
type Batch struct {
	ID, Tenant, Endpoint, InputFileID, CompletionWindow string
	Status                                              string
	Metadata                                            string // JSON object, or empty
	Errors                                              string // JSON list of the input's errors, or empty
	OutputFileID, ErrorFileID                           string
	Total, Completed, Failed, Next                      int // Next: the first line not yet a job
	CreatedAt, InProgressAt, ExpiresAt, FinalizingAt    time.Time
	CompletedAt, FailedAt, ExpiredAt                    time.Time
	CancellingAt, CancelledAt                           time.Time
}

// Ended says whether a batch status is final.
func BatchEnded(status string) bool {
	switch status {
	case BatchCompleted, BatchFailed, BatchExpired, BatchCancelled:
		return true
	}
	return false
}

func ms(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixMilli(), 10)
}

// CreateBatch writes a new batch, kept for keep, into the active set.
func (s *Store) CreateBatch(ctx context.Context, b Batch, keep time.Duration) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, rkeys.Batch(b.Tenant, b.ID), "endpoint", b.Endpoint, "input_file_id", b.InputFileID,
			"completion_window", b.CompletionWindow, "status", b.Status, "metadata", b.Metadata, "errors", b.Errors,
			"total", b.Total, "completed", 0, "failed", 0, "next", 0,
			"created_at", ms(b.CreatedAt), "in_progress_at", ms(b.InProgressAt), "expires_at", ms(b.ExpiresAt), "failed_at", ms(b.FailedAt))
		p.Expire(ctx, rkeys.Batch(b.Tenant, b.ID), keep)
		p.ZAdd(ctx, rkeys.Batches(b.Tenant), redis.Z{Score: float64(b.CreatedAt.UnixMilli()), Member: b.ID})
		p.Expire(ctx, rkeys.Batches(b.Tenant), keep)
		return nil
	})
	if err != nil {
		return unavailable("create batch", err)
	}
	// A batch that failed validation is active too, until its webhooks go out.
	if err := s.rdb.SAdd(ctx, rkeys.BatchesActive(), b.Tenant+"\n"+b.ID).Err(); err != nil {
		return unavailable("create batch", err)
	}
	return nil
}

// GetBatch reads a tenant's batch.
func (s *Store) GetBatch(ctx context.Context, tenant, id string) (Batch, error) {
	m, err := s.rdb.HGetAll(ctx, rkeys.Batch(tenant, id)).Result()
	if err != nil {
		return Batch{}, unavailable("read batch", err)
	}
	if len(m) == 0 {
		return Batch{}, ErrBatchNotFound
	}
	n := func(k string) int { v, _ := strconv.Atoi(m[k]); return v }
	return Batch{ID: id, Tenant: tenant, Endpoint: m["endpoint"], InputFileID: m["input_file_id"], CompletionWindow: m["completion_window"],
		Status: m["status"], Metadata: m["metadata"], Errors: m["errors"], OutputFileID: m["output_file_id"], ErrorFileID: m["error_file_id"],
		Total: n("total"), Completed: n("completed"), Failed: n("failed"), Next: n("next"),
		CreatedAt: parseMillis(m["created_at"]), InProgressAt: parseMillis(m["in_progress_at"]), ExpiresAt: parseMillis(m["expires_at"]),
		FinalizingAt: parseMillis(m["finalizing_at"]), CompletedAt: parseMillis(m["completed_at"]), FailedAt: parseMillis(m["failed_at"]),
		ExpiredAt: parseMillis(m["expired_at"]), CancellingAt: parseMillis(m["cancelling_at"]), CancelledAt: parseMillis(m["cancelled_at"])}, nil
}

// ListBatches lists a tenant's batches, newest first (see ListFiles).
func (s *Store) ListBatches(ctx context.Context, tenant, after string, limit int) ([]Batch, bool, error) {
	ids, more, err := s.page(ctx, rkeys.Batches(tenant), after, limit)
	if err != nil {
		return nil, false, err
	}
	out := make([]Batch, 0, len(ids))
	for _, id := range ids {
		b, err := s.GetBatch(ctx, tenant, id)
		if errors.Is(err, ErrBatchNotFound) {
			s.rdb.ZRem(ctx, rkeys.Batches(tenant), id) // expired
			continue
		}
		if err != nil {
			return nil, false, err
		}
		out = append(out, b)
	}
	return out, more, nil
}

// moveBatch moves a batch from one of a.from to a.to, stamping the field
// a.at_field with a.at and writing the pairs of a.set; 0 when it was in
// another status. KEYS: batch. ARGV[1]: moveArgs JSON.
var moveBatch = redis.NewScript(`
local a = cjson.decode(ARGV[1])
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 0 end
local ok = false
for _, from in ipairs(a.from) do if from == st then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', a.to, a.at_field, a.at)
for i = 1, #a.set, 2 do redis.call('HSET', KEYS[1], a.set[i], a.set[i + 1]) end
return 1
`)

// moveArgs are moveBatch's arguments.
type moveArgs struct {
	From    []string `json:"from"`
	To      string   `json:"to"`
	AtField string   `json:"at_field"`
	At      string   `json:"at"`
	Set     []string `json:"set"`
}

// MoveBatch moves a batch to status `to`, stamped now, if it is in one of
// `from`; set are more fields to write with it. It reports whether it moved.
func (s *Store) MoveBatch(ctx context.Context, tenant, id string, from []string, to string, now time.Time, set ...string) (bool, error) {
	a := moveArgs{From: from, To: to, AtField: to + "_at", At: ms(now), Set: append([]string{}, set...)}
	n, err := moveBatch.Run(ctx, s.rdb, []string{rkeys.Batch(tenant, id)}, argsJSON(a)).Int()
	if err != nil {
		return false, unavailable("move batch", err)
	}
	return n == 1, nil
}

// ActiveBatches lists the batches not yet ended, and those whose end is not
// yet told (their webhooks), fleet-wide, as tenant and id.
func (s *Store) ActiveBatches(ctx context.Context) ([][2]string, error) {
	ms, err := s.rdb.SMembers(ctx, rkeys.BatchesActive()).Result()
	if err != nil {
		return nil, unavailable("list active batches", err)
	}
	out := make([][2]string, 0, len(ms))
	for _, m := range ms {
		if t, id, ok := strings.Cut(m, "\n"); ok {
			out = append(out, [2]string{t, id})
		}
	}
	return out, nil
}

// DropActive takes a batch whose end is told, or whose record is gone, out
// of the active set.
func (s *Store) DropActive(ctx context.Context, tenant, id string) error {
	return s.rdb.SRem(ctx, rkeys.BatchesActive(), tenant+"\n"+id).Err()
}

// claimBatch takes or renews the claim on a batch for a.runner; 0 when
// another runner holds it. KEYS: lock. ARGV[1]: claimBatchArgs JSON.
var claimBatch = redis.NewScript(`
local a = cjson.decode(ARGV[1])
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= a.runner then return 0 end
redis.call('SET', KEYS[1], a.runner, 'PX', a.ttl)
return 1
`)

// claimBatchArgs are claimBatch's arguments.
type claimBatchArgs struct {
	Runner string `json:"runner"`
	TTL    int64  `json:"ttl"` // ms
}

// ClaimBatch takes or renews runner's claim on a batch for ttl.
func (s *Store) ClaimBatch(ctx context.Context, id, runner string, ttl time.Duration) (bool, error) {
	n, err := claimBatch.Run(ctx, s.rdb, []string{rkeys.BatchLock(id)}, argsJSON(claimBatchArgs{Runner: runner, TTL: ttl.Milliseconds()})).Int()
	if err != nil {
		return false, unavailable("claim batch", err)
	}
	return n == 1, nil
}

// BatchRunningLines reads a batch's lines that are jobs now: line -> job id.
func (s *Store) BatchRunningLines(ctx context.Context, tenant, id string) (map[int]string, error) {
	return s.lineMap(ctx, rkeys.BatchRunning(tenant, id))
}

// lineMap reads a hash of a batch's lines: line -> value.
func (s *Store) lineMap(ctx context.Context, key string) (map[int]string, error) {
	m, err := s.rdb.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, unavailable("read batch", err)
	}
	out := make(map[int]string, len(m))
	for k, v := range m {
		if n, err := strconv.Atoi(k); err == nil {
			out[n] = v
		}
	}
	return out, nil
}

// FedLine records that a batch's line is job jobID, and that the lines
// before next are jobs or answered.
func (s *Store) FedLine(ctx context.Context, tenant, id string, line int, jobID string, keep time.Duration) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, rkeys.BatchRunning(tenant, id), strconv.Itoa(line), jobID)
		p.Expire(ctx, rkeys.BatchRunning(tenant, id), keep)
		p.HSet(ctx, rkeys.Batch(tenant, id), "next", line+1)
		return nil
	})
	if err != nil {
		return unavailable("feed batch", err)
	}
	return nil
}

// recordLine keeps a batch line's answer once: it leaves the running
// lines and counts as a.count (completed or failed). 0 when it was answered
// already. KEYS: batch, results, running. ARGV[1]: recordArgs JSON.
var recordLine = redis.NewScript(`
local a = cjson.decode(ARGV[1])
local line = tostring(a.line)
if redis.call('HSETNX', KEYS[2], line, a.out) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], a.keep)
redis.call('HDEL', KEYS[3], line)
redis.call('HINCRBY', KEYS[1], a.count, 1)
return 1
`)

// recordArgs are recordLine's arguments.
type recordArgs struct {
	Line  int    `json:"line"`
	Count string `json:"count"`
	Out   string `json:"out"`
	Keep  int64  `json:"keep"` // s
}

// RecordLine keeps the answer of a batch's line once (ok: completed, else
// failed) and reports whether this call kept it.
func (s *Store) RecordLine(ctx context.Context, tenant, id string, line int, ok bool, out string, keep time.Duration) (bool, error) {
	a := recordArgs{Line: line, Count: "failed", Out: out, Keep: int64(keep.Seconds())}
	if ok {
		a.Count = "completed"
	}
	n, err := recordLine.Run(ctx, s.rdb, []string{rkeys.Batch(tenant, id), rkeys.BatchResults(tenant, id), rkeys.BatchRunning(tenant, id)}, argsJSON(a)).Int()
	if err != nil {
		return false, unavailable("record batch line", err)
	}
	return n == 1, nil
}

// BatchResultLines reads a batch's answered lines: line -> its output or
// error line.
func (s *Store) BatchResultLines(ctx context.Context, tenant, id string) (map[int]string, error) {
	return s.lineMap(ctx, rkeys.BatchResults(tenant, id))
}

// Statuses reads the status of jobs (one pipeline); a gone record's is "".
func (s *Store) Statuses(ctx context.Context, ids []string) ([]string, error) {
	cmds := make([]*redis.StringCmd, len(ids))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HGet(ctx, rkeys.Job(id), "status")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, unavailable("read job statuses", err)
	}
	out := make([]string, len(ids))
	for i, c := range cmds {
		out[i] = c.Val()
	}
	return out, nil
}

// DropBatchLines removes an ended batch's answered and running lines.
func (s *Store) DropBatchLines(ctx context.Context, tenant, id string) error {
	if err := s.rdb.Del(ctx, rkeys.BatchResults(tenant, id), rkeys.BatchRunning(tenant, id)).Err(); err != nil {
		return unavailable("end batch", err)
	}
	return nil
}

// SetBatchNext records that the lines before next are jobs or answered.
func (s *Store) SetBatchNext(ctx context.Context, tenant, id string, next int) error {
	if err := s.rdb.HSet(ctx, rkeys.Batch(tenant, id), "next", next).Err(); err != nil {
		return unavailable("feed batch", err)
	}
	return nil
}
