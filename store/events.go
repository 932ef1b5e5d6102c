package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Event types of a job's log. Each has one payload type below; docs/api.md
// lists them and a test holds the two together.
const (
	EventToken    = "token"
	EventToolCall = "tool_call"
	EventRetry    = "retry"
	EventDone     = "done"
	EventError    = "error"
	EventCanceled = "canceled"
)

// Payload is the body of one event: its JSON is the `data:` line clients
// read. Seq is 0 while an event is appended: the append script numbers it.
type Payload interface {
	EventType() string
}

// TokenEvent carries the next piece of the reply.
type TokenEvent struct {
	Seq   int64  `json:"seq,omitempty"`
	Delta string `json:"delta"`
}

// ToolCallEvent carries a fragment of the Index-th tool call of the reply
// (0, 1, …): its id and name when the call is first seen, then pieces of its
// JSON arguments. The fragments of one call add up to its arguments.
type ToolCallEvent struct {
	Seq       int64  `json:"seq,omitempty"`
	Index     int    `json:"index"`
	ID        string `json:"id,omitempty"`
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// RetryEvent says an attempt failed after partial output: discard what was
// shown. Attempt is the attempt that follows.
type RetryEvent struct {
	Seq     int64  `json:"seq,omitempty"`
	Attempt int    `json:"attempt"`
	Reason  string `json:"reason"`
}

// DoneEvent ends the log of a job that succeeded.
type DoneEvent struct {
	Seq    int64   `json:"seq,omitempty"`
	Result *Result `json:"result"`
	Usage  *Usage  `json:"usage"`
}

// ErrorEvent ends the log of a job that failed.
type ErrorEvent struct {
	Seq   int64     `json:"seq,omitempty"`
	Error *JobError `json:"error"`
}

// CanceledEvent ends the log of a job that was canceled.
type CanceledEvent struct {
	Seq int64 `json:"seq,omitempty"`
}

// EventType implements Payload.
func (TokenEvent) EventType() string { return EventToken }

// EventType implements Payload.
func (ToolCallEvent) EventType() string { return EventToolCall }

// EventType implements Payload.
func (RetryEvent) EventType() string { return EventRetry }

// EventType implements Payload.
func (DoneEvent) EventType() string { return EventDone }

// EventType implements Payload.
func (ErrorEvent) EventType() string { return EventError }

// EventType implements Payload.
func (CanceledEvent) EventType() string { return EventCanceled }

// FinalEvent reports whether an event type ends a job's log.
func FinalEvent(typ string) bool {
	return typ == EventDone || typ == EventError || typ == EventCanceled
}

// Event is one entry of a job's log. Data is the JSON object sent to clients;
// it includes "seq".
type Event struct {
	Seq  int64
	Type string
	Data string
	// Live is set on an event that went out live ahead of the log: the seq
	// of the first event of the attempt that sent it (ParseMessage).
	Live int64
}

// Decode returns the event's payload as its type.
func (e Event) Decode() (Payload, error) {
	var p Payload
	var err error
	switch e.Type {
	case EventToken:
		p, err = decodeAs[TokenEvent](e.Data)
	case EventToolCall:
		p, err = decodeAs[ToolCallEvent](e.Data)
	case EventRetry:
		p, err = decodeAs[RetryEvent](e.Data)
	case EventDone:
		p, err = decodeAs[DoneEvent](e.Data)
	case EventError:
		p, err = decodeAs[ErrorEvent](e.Data)
	case EventCanceled:
		p, err = decodeAs[CanceledEvent](e.Data)
	default:
		return nil, fmt.Errorf("unknown event type %q", e.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("decode %s event: %w", e.Type, err)
	}
	return p, nil
}

func decodeAs[T any](data string) (T, error) {
	var v T
	err := json.Unmarshal([]byte(data), &v)
	return v, err
}

// ErrJobFinished is returned when an event is offered for a job that has
// already ended (canceled while it ran): nothing may follow its final event.
var ErrJobFinished = errors.New("job already finished")

// ParseEvent decodes a log entry or pub/sub message: `<type> {"seq":N,...}`.
func ParseEvent(entry string) (Event, error) {
	typ, data, ok := strings.Cut(entry, " ")
	if !ok || !strings.HasPrefix(data, `{"seq":`) {
		return Event{}, fmt.Errorf("malformed event %.40q", entry)
	}
	num := data[len(`{"seq":`):]
	end := strings.IndexAny(num, ",}")
	if end < 0 {
		return Event{}, fmt.Errorf("malformed event %.40q", entry)
	}
	seq, err := strconv.ParseInt(num[:end], 10, 64)
	if err != nil || seq < 1 {
		return Event{}, fmt.Errorf("malformed event seq %.40q", entry)
	}
	return Event{Seq: seq, Type: typ, Data: data}, nil
}

// appendEventLua appends one event to a job's log and publishes it, in one
// step, so a subscriber that subscribes first and then reads the log misses
// nothing. seq is the event's 1-based position in the log; it is spliced into
// the JSON body, which arrives without it. publish is PUBLISH, or SPUBLISH on
// Redis Cluster (the channel then lives on the job's shard).
// key, when not empty, names the append: the record keeps the last one's
// key and seq (append_key, append_seq), and an append sent again with that
// key (its first try timed out, or its reply was lost) returns the seq it
// got without appending twice: {seq, -1}.
const appendEventLua = `
local function append_event(events, channel, typ, body, ttl, publish)
  local seq = redis.call('LLEN', events) + 1
  local data
  if body == '{}' then
    data = '{"seq":' .. seq .. '}'
  else
    data = '{"seq":' .. seq .. ',' .. string.sub(body, 2)
  end
  local entry = typ .. ' ' .. data
  redis.call('RPUSH', events, entry)
  if seq == 1 then redis.call('EXPIRE', events, ttl) end -- finish sets it again
  return seq, redis.call(publish, channel, entry) -- and how many follow it live
end
local function append_once(job, events, channel, typ, body, ttl, publish, key)
  if key == '' then return append_event(events, channel, typ, body, ttl, publish) end
  local last = redis.call('HMGET', job, 'append_key', 'append_seq')
  if last[1] == key then return tonumber(last[2]), -1 end
  local seq, followers = append_event(events, channel, typ, body, ttl, publish)
  redis.call('HSET', job, 'append_key', key, 'append_seq', seq)
  return seq, followers
end
`

// appendEvent adds an event to a running job; a log it starts is kept as
// long as the record (Store.keep, then finish's retention). Returns the event's seq and
// how many subscribers got it live (-1: the append was made before, under
// the same key); a seq of 0 when the job is already
// finished (nothing may follow its last event), -1 when the record is gone,
// -2 when a later attempt owns the job (this one is fenced out).
// KEYS: job, events, ahead. ARGV[1]: appendArgs JSON.
var appendEvent = redis.NewScript(lua(appendEventLua, ownsLua, settleLua, `
local a = cjson.decode(ARGV[1])
local job, events = KEYS[1], KEYS[2]
local typ, body, retention, channel, fence, publish, key = a.type, a.body, a.ttl, a.channel, a.fence, a.publish, a.key
local st, f = state(job)
if not st then return {-1, 0} end
if terminal(st) then return {0, 0} end
if fence > 0 and (st ~= ACTIVE or f ~= fence) then return {-2, 0} end
settle(events, KEYS[3], f) -- what the attempt published ahead comes first
return {append_once(job, events, channel, typ, body, retention, publish, key)}
`))

// appendArgs are appendEvent's arguments.
type appendArgs struct {
	Type    string `json:"type"`
	Body    string `json:"body"` // the event's JSON, without seq
	TTL     int64  `json:"ttl"`  // s: a log it starts is kept that long
	Channel string `json:"channel"`
	Fence   int    `json:"fence"` // 0: not an attempt's
	Publish string `json:"publish"`
	Key     string `json:"key"` // appendKey; empty: not numbered
}

// Appended is where an event went.
type Appended struct {
	Seq int64
	// Followers is how many subscribers got it live (on Redis Cluster, of
	// the job's shard: where every follower of the job subscribes).
	Followers int64
	// Repeated: the append had been made before, under the same key
	// (Followers is then unknown).
	Repeated bool
}

// AppendEvent adds an event to a running job's log and publishes it.
// attempt > 0 fences it: ErrSuperseded once a later attempt owns the job.
// n > 0 numbers the attempt's events (1, 2, …) and makes the append safe
// to send again after an error: the job's last append is not made twice.
func (s *Store) AppendEvent(ctx context.Context, id string, attempt int, n int64, p Payload) (Appended, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return Appended{}, fmt.Errorf("encode %s event: %w", p.EventType(), err)
	}
	res, err := appendEvent.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Events(id), rkeys.Ahead(id)},
		argsJSON(appendArgs{Type: p.EventType(), Body: string(b), TTL: s.keep(), Channel: rkeys.LiveChannel(id), Fence: attempt, Publish: s.publish,
			Key: appendKey(attempt, n)})).Int64Slice()
	switch {
	case err != nil:
		return Appended{}, unavailable("append event", err)
	case len(res) != 2:
		return Appended{}, fmt.Errorf("append event: unexpected reply %v", res)
	case res[0] == 0:
		return Appended{}, ErrJobFinished
	case res[0] == -2:
		return Appended{}, ErrSuperseded
	case res[0] < 0:
		return Appended{}, ErrNotFound
	}
	return Appended{Seq: res[0], Followers: max(res[1], 0), Repeated: res[1] < 0}, nil
}

// appendKey names the n-th numbered event of an attempt: unique per job, as
// every attempt has its own fence. Empty when n is 0 (not numbered).
func appendKey(attempt int, n int64) string {
	if n <= 0 {
		return ""
	}
	return strconv.Itoa(attempt) + ":" + strconv.FormatInt(n, 10)
}

// Events returns a job's log after seq `after`, oldest first.
func (s *Store) Events(ctx context.Context, id string, after int64) ([]Event, error) {
	raw, err := s.rdb.LRange(ctx, rkeys.Events(id), after, -1).Result()
	if err != nil {
		return nil, unavailable("read events", err)
	}
	out := make([]Event, 0, len(raw))
	for _, r := range raw {
		ev, err := ParseEvent(r)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// LastEvent returns the newest event of a job's log (ok=false when empty).
func (s *Store) LastEvent(ctx context.Context, id string) (Event, bool, error) {
	raw, err := s.rdb.LRange(ctx, rkeys.Events(id), -1, -1).Result()
	if err != nil {
		return Event{}, false, unavailable("read events", err)
	}
	if len(raw) == 0 {
		return Event{}, false, nil
	}
	ev, err := ParseEvent(raw[0])
	return ev, err == nil, err
}

// Interrupt tells the process that runs job id, if the record names one,
// to cancel its run (rkeys.InterruptPrefix on rkeys.RunnerChannel): a job a
// worker runs without an asynq task, which asynq's cancel cannot reach.
func (s *Store) Interrupt(ctx context.Context, id string) error {
	runner, err := s.rdb.HGet(ctx, rkeys.Job(id), "runner").Result()
	if errors.Is(err, redis.Nil) || runner == "" {
		return nil
	}
	if err != nil {
		return unavailable("read the job's runner", err)
	}
	return s.tellRunner(ctx, runner, rkeys.InterruptPrefix+id, "interrupt the job's runner")
}

// finalEvent is the event Finish appends for an outcome.
func finalEvent(o Outcome) Payload {
	switch o.Status {
	case StatusSucceeded:
		return DoneEvent{Result: o.Result, Usage: o.Usage}
	case StatusCanceled:
		return CanceledEvent{}
	}
	return ErrorEvent{Error: o.Error}
}

// markFollowed records that a client follows a job's tokens live and
// returns its status and runner. KEYS: job.
var markFollowed = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return {false, false} end
redis.call('HSET', KEYS[1], 'followed', '1')
return redis.call('HMGET', KEYS[1], 'status', 'runner')
`)

// Wake records that a client follows job id's tokens live, so that every
// attempt streams them at the followed window, and tells the process
// running it, if one does now (rkeys.RunnerChannel): it sends the deltas
// it was holding back and the rest at the followed pace.
func (s *Store) Wake(ctx context.Context, id string) error {
	vals, err := markFollowed.Run(ctx, s.rdb, []string{rkeys.Job(id)}).Slice()
	if err != nil {
		return unavailable("mark the job followed", err)
	}
	if len(vals) != 2 {
		return fmt.Errorf("mark the job followed: unexpected reply %v", vals)
	}
	st, _ := vals[0].(string)
	runner, _ := vals[1].(string)
	if st != StatusActive || runner == "" {
		return nil // not running: its attempt will read the mark
	}
	return s.tellRunner(ctx, runner, id, "wake the job's runner")
}

// tellRunner publishes msg on a runner's channel (sharded on a cluster).
func (s *Store) tellRunner(ctx context.Context, runner, msg, what string) error {
	ch := rkeys.RunnerChannel(runner)
	var err error
	if s.publish == "SPUBLISH" {
		err = s.rdb.SPublish(ctx, ch, msg).Err()
	} else {
		err = s.rdb.Publish(ctx, ch, msg).Err()
	}
	if err != nil {
		return unavailable(what, err)
	}
	return nil
}
