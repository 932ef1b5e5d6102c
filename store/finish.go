package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// finish ends a job once: sets the terminal status and its fields, appends the
// final event (done, error or canceled) to the log, appends the history entries
// if any, releases the session's turn and drops the job from the indexes.
// An attempt's finish is fenced: it applies only while that attempt owns the
// job. Returns {1, counted, notify} when this call finished the job, {0, 0,
// 0} when it was already finished (or the attempt was fenced out), {-1, 1, 0}
// when the record is gone; counted (1) says the job is in its tenant's count
// of unfinished jobs, to be removed; notify (1) that the job has webhooks,
// now in its bucket's outbox (a sweep enqueues them if the caller does not);
// the session's next job (releaseLua) follows when this made its turn.
// A job whose provider calls reported usage adds it to its tenant's ledger
// (rkeys.Usage) in the same step, so usage is counted once, by whatever
// ended the job.
// A job that reserved against its tenant's budget records what it cost
// (budget_spend: its answer's and its failed calls' budget_extra) and enters
// its bucket's settle index (store/budget.go). What a failed last call used
// (spentLua) is counted even when the finish is fenced out.
// The attempt's tail (Tail) goes into the log just before the final event.
// KEYS: job, order, history, events, leases, unfinished, webhook outbox,
// usage ledger, settle index, ahead (rkeys.Ahead).
// ARGV[1]: finishArgs JSON; ARGV[2..]: the blobs, in this order: the
// record's field/value pairs to set (a.fields strings: status, finished_at,
// and result, usage and error when set), the events to append (type and
// body of each: the tail's a.tail, then the final event), then the history
// entries to append.
var finish = redis.NewScript(lua(releaseLua, appendEventLua, ownsLua, settleLua, redisNowLua, outboxDelayLua, spentLua, `
local a = cjson.decode(ARGV[1])
local job, order, history, events, leases, unfinished, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local ledger, settle_index, ahead = KEYS[8], KEYS[9], KEYS[10]
local id, retention, history_max, history_ttl = a.id, a.retention, a.history_max, a.history_ttl
local channel, fence, member, publish, tail_key = a.channel, a.fence, a.member, a.publish, a.tail_key
local usage_field, prompt_tokens, completion_tokens, usage_ttl = a.usage_field, a.prompt, a.completion, a.usage_ttl
local budget_spend = a.budget_spend
local next_blob = 2
local function blobs(n) -- the next n of ARGV[2..]
  local out = {}
  for i = next_blob, next_blob + n - 1 do out[#out + 1] = ARGV[i] end
  next_blob = next_blob + n
  return out
end
local fields = blobs(a.fields)
local evs = blobs(2 * a.tail) -- type and body of each
local tail_entries = blobs(a.tail_entries)
local final = blobs(2)
local entries = blobs(#ARGV - next_blob + 1)
local function released() return release(order, unfinished, a.release) end
count_spent(job, ledger, a.spent) -- a failed call was billed, whoever ends the job
local st, f = state(job)
if not st then
  redis.call('ZREM', unfinished, member)
  return {-1, 1, 0, released()}
end
if terminal(st) then return {0, 0, 0} end
if fence > 0 then
  if st ~= ACTIVE or f ~= fence then return {0, 0, 0} end
  redis.call('ZREM', leases, id .. ':' .. fence)
end
local marks = redis.call('HMGET', job, 'counted', 'webhook', 'budget', 'batch')
local counted = marks[1] == '1' and 1 or 0
local notify = 0
if marks[2] then
  notify = 1
  redis.call('ZADD', outbox, redis_now() + OUTBOX_DELAY, id)
end
if marks[3] then
  budget_spend = budget_spend + (tonumber(redis.call('HGET', job, 'budget_extra')) or 0)
  redis.call('HSET', job, 'budget_spend', budget_spend)
  redis.call('ZADD', settle_index, redis_now() + OUTBOX_DELAY, id)
  redis.call('EXPIRE', settle_index, retention)
end
redis.call('ZREM', unfinished, member)
redis.call('HSET', job, unpack(fields))
if usage_field ~= '' then
  redis.call('HINCRBY', ledger, usage_field .. '|r', 1)
  redis.call('HINCRBY', ledger, usage_field .. '|p', prompt_tokens)
  redis.call('HINCRBY', ledger, usage_field .. '|c', completion_tokens)
  if marks[4] then -- a batch's line: its part of the row
    redis.call('HINCRBY', ledger, usage_field .. '|br', 1)
    redis.call('HINCRBY', ledger, usage_field .. '|bp', prompt_tokens)
    redis.call('HINCRBY', ledger, usage_field .. '|bc', completion_tokens)
  end
  redis.call('EXPIRE', ledger, usage_ttl)
end
-- the payload was only needed to run the job again; a body by reference
-- (tasks.ChatPayload.Body) stays with an error, for a re-run of the job
if a.has_error then redis.call('HDEL', job, 'payload') else redis.call('HDEL', job, 'payload', 'error', 'body') end
redis.call('EXPIRE', job, retention)
if #tail_entries > 0 then
  -- the attempt's tail by seq (from tail_seq), what it sent live ahead
  -- included: what the log holds already is not appended again, and the
  -- final event's publish brings followers behind to the log
  local n = redis.call('LLEN', events)
  local out = {}
  for i = math.max(1, n + 2 - a.tail_seq), #tail_entries do out[#out + 1] = tail_entries[i] end
  push(events, out)
else
  settle(events, ahead, f) -- what followers saw live goes in before the end
end
redis.call('DEL', ahead)
for i = 1, a.tail do
  local key = i == 1 and tail_key or '' -- the first may be in the log already: its append's reply was lost
  append_once(job, events, channel, evs[2 * i - 1], evs[2 * i], retention, publish, key)
end
if append_event(events, channel, final[1], final[2], retention, publish) > 1 then
  redis.call('EXPIRE', events, retention) -- the log lives as long as the record
end
if #entries > 0 then
  for _, e in ipairs(entries) do redis.call('RPUSH', history, e) end
  redis.call('LTRIM', history, -history_max, -1)
  redis.call('EXPIRE', history, history_ttl)
end
return {1, counted, notify, released()}
`))

// OutboxDelay is how long a job's webhooks wait in the outbox for the
// process that finished it to enqueue them, before a sweep does.
const OutboxDelay = 10 * time.Second

var outboxDelayLua = fmt.Sprintf("local OUTBOX_DELAY = %d\n", OutboxDelay.Milliseconds())

// finishArgs are finish's arguments: the named ones go to ARGV[1], the
// blobs (json:"-") after it.
type finishArgs struct {
	ID          string      `json:"id"`
	Retention   int64       `json:"retention"` // s
	HistoryMax  int         `json:"history_max"`
	HistoryTTL  int64       `json:"history_ttl"` // s
	HasError    bool        `json:"has_error"`   // the record keeps its error
	Channel     string      `json:"channel"`
	Fence       int         `json:"fence"` // 0: not an attempt's
	Member      string      `json:"member"`
	Publish     string      `json:"publish"`
	TailKey     string      `json:"tail_key"` // the append key of Tail[0]
	TailSeq     int64       `json:"tail_seq"` // the seq of Tail[0] when known (Tail.Seq)
	Release     releaseArgs `json:"release"`
	UsageField  string      `json:"usage_field"` // "<day>|<model>" of the ledger; empty: nothing to count
	Prompt      int         `json:"prompt"`      // tokens to count
	Completion  int         `json:"completion"`
	UsageTTL    int64       `json:"usage_ttl"`    // s
	BudgetSpend int64       `json:"budget_spend"` // what the job cost against its tenant's budget
	Spent       spentArgs   `json:"spent"`
	NFields     int         `json:"fields"`       // len(Fields), set by argv
	NTail       int         `json:"tail"`         // len(Tail)/2, set by argv
	NEntries    int         `json:"tail_entries"` // len(TailEntries), set by argv

	Fields               []string `json:"-"` // the record's field/value pairs to set
	Tail                 []string `json:"-"` // type and body (JSON) of each event
	TailEntries          []string `json:"-"` // or, when TailSeq is set, each event's log entry
	EventType, EventBody string   `json:"-"` // the final event
	History              []string `json:"-"` // entries (JSON) to append
}

// argv is ARGV: the named arguments, then the blobs.
func (a finishArgs) argv() []any {
	a.NFields, a.NTail, a.NEntries = len(a.Fields), len(a.Tail)/2, len(a.TailEntries)
	out := make([]any, 0, 1+len(a.Fields)+len(a.Tail)+len(a.TailEntries)+2+len(a.History))
	out = append(out, argsJSON(a))
	for _, b := range [][]string{a.Fields, a.Tail, a.TailEntries, {a.EventType, a.EventBody}, a.History} {
		for _, s := range b {
			out = append(out, s)
		}
	}
	return out
}

// Outcome is how a job ended.
type Outcome struct {
	Status  string // succeeded, failed or canceled
	Result  *Result
	Usage   *Usage
	Error   *JobError
	History []Message // appended to the session's history with the outcome
	// Tail is what the attempt's log had not confirmed when it ended.
	Tail Tail
	// UsageModel is the model the usage is counted and priced under: the
	// one the call asked for (default: Result.Model).
	UsageModel string
	// BudgetSpend is what the job cost against its tenant's budget (tokens
	// or millionths of a dollar), settled against its reservation.
	BudgetSpend int64
	// Spent is what the failed call that ended the job used (nil: nothing
	// known): counted in the ledger, its cost in the budget's.
	Spent *Spent
}

// Tail is the end of an attempt's output that its log had not confirmed
// when it ended, appended just before the final event in the same script:
// a fast reply's last batch costs no round trip of its own, and an append
// that failed is made exactly once.
type Tail struct {
	// Unconfirmed are events whose append failed, oldest first. The first
	// may have been made all the same (a timeout after Redis applied it):
	// N, its number in the attempt (AppendEvent), lets the script tell.
	Unconfirmed []Payload
	N           int64
	// Seq, when set, is the seq of the tail's first event in the log (the
	// attempt knew where its events go: SyncEvents): the script appends
	// only what the log does not hold yet, whether the attempt's own
	// append or a settle of what it published ahead put it there.
	Seq int64
	// Text is the reply's text that was waiting for its batch.
	Text string
}

// events are the tail's events, its text last.
func (t Tail) events() []Payload {
	if t.Text == "" {
		return t.Unconfirmed
	}
	return append(t.Unconfirmed[:len(t.Unconfirmed):len(t.Unconfirmed)], TokenEvent{Delta: t.Text})
}

// entries encodes the tail's events as log entries, from seq t.Seq on.
func (t Tail) entries() ([]string, error) {
	evs := t.events()
	out := make([]string, len(evs))
	for i, ev := range evs {
		var err error
		if out[i], err = Entry(t.Seq+int64(i), ev); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// argv encodes the tail's events as type and body pairs.
func (t Tail) argv() ([]string, error) {
	evs := t.events()
	out := make([]string, 0, 2*len(evs))
	for _, ev := range evs {
		b, err := json.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("encode %s event: %w", ev.EventType(), err)
		}
		out = append(out, ev.EventType(), string(b))
	}
	return out, nil
}

// Finished is what Finish did.
type Finished struct {
	First  bool  // this call finished the job
	Next   *Next // the session's job whose turn came: its task is to be enqueued now
	Notify bool  // the job has webhooks, now in the outbox (Store.ClaimWebhooks)
}

// Finish records a job's outcome exactly once, appends its final event (done,
// error or canceled) to the event log, puts its webhooks in the outbox and
// releases its session's turn. attempt > 0 fences it: it applies only while
// that attempt owns the job; 0 is for the lifecycle's own ends (cancel,
// reconcile).
func (s *Store) Finish(ctx context.Context, id, tenant, session string, attempt int, o Outcome) (Finished, error) {
	ev := finalEvent(o)
	body, err := json.Marshal(ev)
	if err != nil {
		return Finished{}, fmt.Errorf("encode %s event: %w", ev.EventType(), err)
	}
	now := s.opt.Clock().UTC()
	a := finishArgs{ID: id, Retention: seconds(s.opt.Retention),
		HistoryMax: s.opt.HistoryMaxMessages, HistoryTTL: seconds(s.opt.HistoryTTL),
		EventType: ev.EventType(), EventBody: string(body), Channel: rkeys.LiveChannel(id), Fence: attempt,
		Member: rkeys.UnfinishedMember(tenant, session, id), Publish: s.publish,
		Release:  releaseArgs{ID: id, Tenant: tenant, Session: session, Prefix: rkeys.JobPrefix(id), Check: now.Add(HandOffCheck).UnixMilli()},
		UsageTTL: seconds(s.usageTTL()), BudgetSpend: o.BudgetSpend, Spent: s.spentArgs(o.Spent, now)}
	a.Fields = []string{"status", o.Status, "finished_at", fmtTime(now)}
	for _, f := range [][2]string{{"result", jsonOrEmpty(o.Result)}, {"usage", jsonOrEmpty(o.Usage)}, {"error", jsonOrEmpty(o.Error)}} {
		if f[1] != "" { // JSON, or empty: not set
			a.Fields = append(a.Fields, f[0], f[1])
			a.HasError = a.HasError || f[0] == "error"
		}
	}
	if o.Usage != nil && (o.Usage.PromptTokens > 0 || o.Usage.CompletionTokens > 0) {
		a.UsageField, a.Prompt, a.Completion = now.Format("02")+"|"+usageModel(o), o.Usage.PromptTokens, o.Usage.CompletionTokens
	}
	if o.Tail.Seq > 0 {
		a.TailEntries, err = o.Tail.entries()
	} else {
		a.Tail, err = o.Tail.argv()
	}
	if err != nil {
		return Finished{}, err
	}
	if len(o.Tail.Unconfirmed) > 0 {
		a.TailKey = appendKey(attempt, o.Tail.N)
	}
	a.TailSeq = o.Tail.Seq
	for _, m := range o.History {
		a.History = append(a.History, jsonOrEmpty(m))
	}
	keys := []string{rkeys.Job(id), rkeys.SessionOrder(tenant, session), rkeys.History(tenant, session), rkeys.Events(id),
		rkeys.Leases(rkeys.Bucket(id)), rkeys.Unfinished(rkeys.Bucket(id)), rkeys.WebhookOutbox(rkeys.Bucket(id)),
		rkeys.Usage(rkeys.Bucket(id), tenant, now.Format("2006-01")), rkeys.BudgetSettle(rkeys.Bucket(id)), rkeys.Ahead(id)}
	res, err := finish.Run(ctx, s.rdb, keys, a.argv()...).Slice()
	if err != nil {
		return Finished{}, unavailable("finish job", err)
	}
	var n [3]int64
	for i := range n {
		if n[i], err = intAt(res, i, "finish job"); err != nil {
			return Finished{}, err
		}
	}
	if n[1] == 1 {
		s.uncount(ctx, tenant, id)
	}
	f := Finished{First: n[0] == 1, Notify: n[2] == 1}
	if len(res) > 3 {
		f.Next = nextOf(res[3])
	}
	return f, nil
}

// Purge removes a finished job's record, event log (its content) and entry
// in its tenant's job list at once, instead of at the end of the retention.
// Its session's order and the other indexes were released when it finished.
func (s *Store) Purge(ctx context.Context, id, tenant string) error {
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error { // one slot: the job's bucket
		p.Del(ctx, rkeys.Job(id), rkeys.Events(id))
		p.ZRem(ctx, rkeys.Listing(rkeys.Bucket(id), tenant), id)
		return nil
	})
	if err != nil {
		return unavailable("purge job", err)
	}
	return nil
}
