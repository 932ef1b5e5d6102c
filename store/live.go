package store

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// A followed job's deltas go out live ahead of its log: each is published
// with the seq it will have in the log (a bare PUBLISH, pipelined with
// every other job's of the process: about 1 µs of Redis CPU, against about
// 20 µs for a fenced append), and pushed on the job's Ahead list under its
// attempt's fence. The attempt writes them to the log itself now and then
// (SyncEvents, its finish); whatever else writes the log first (a cancel, a
// takeover's start, a retry's announcement) settles them in before its own
// event, so every seq a follower saw live holds the same entry in the log.

// settleLua moves an attempt's events published ahead of the log into it,
// in order from the log's next seq on (an entry sent twice goes in once;
// another attempt's, fenced out, never), and empties the list. pushLua
// appends many entries with few calls.
const settleLua = `
local function push(key, entries)
  for i = 1, #entries, 1000 do
    redis.call('RPUSH', key, unpack(entries, i, math.min(i + 999, #entries)))
  end
end
local function settle(events, ahead, fence)
  if not fence then return end
  local items = redis.call('LRANGE', ahead, 0, -1)
  if #items == 0 then return end
  local prefix = fence .. ' '
  local next_seq = redis.call('LLEN', events) + 1
  local out = {}
  for _, item in ipairs(items) do
    if string.sub(item, 1, #prefix) == prefix then
      local entry = string.sub(item, #prefix + 1)
      if tonumber(string.match(entry, '^%S+ {"seq":(%d+)')) == next_seq then
        out[#out + 1] = entry
        next_seq = next_seq + 1
      end
    end
  end
  if #out > 0 and redis.call('LLEN', events) == 0 then -- the log starts here: it lives as long as the list would have
    push(events, out)
    redis.call('PEXPIRE', events, math.max(redis.call('PTTL', ahead), 1000))
  else
    push(events, out)
  end
  redis.call('DEL', ahead)
end
`

// LiveMark starts a live message on a job's channel: "~<base> <entry>",
// where base is the seq of the first event of the attempt that sent it, so
// a follower past that attempt's retry event drops what it sends late (a
// worker that was paused and fenced out, still publishing).
const LiveMark = "~"

// Entry is the log entry of p at seq: what the log holds and followers read.
func Entry(seq int64, p Payload) (string, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("encode %s event: %w", p.EventType(), err)
	}
	data := `{"seq":` + strconv.FormatInt(seq, 10)
	if body := string(b); body != "{}" {
		data += "," + body[1:]
	} else {
		data += "}"
	}
	return p.EventType() + " " + data, nil
}

// ParseMessage decodes a message of a job's channel: a log entry (ParseEvent),
// or a live one (LiveMark), whose Event.Live is then its attempt's base.
func ParseMessage(msg string) (Event, error) {
	rest, ok := strings.CutPrefix(msg, LiveMark)
	if !ok {
		return ParseEvent(msg)
	}
	num, entry, _ := strings.Cut(rest, " ")
	base, err := strconv.ParseInt(num, 10, 64)
	if err != nil || base < 1 {
		return Event{}, fmt.Errorf("malformed live event %.40q", msg)
	}
	ev, err := ParseEvent(entry)
	ev.Live = base
	return ev, err
}

// syncEvents writes an attempt's events that the log does not hold yet,
// those of ARGV[2..] (seqs from, from+1, …): they include all it published
// ahead, whose list it empties. Each appended entry is published, unless
// live says the followers had them: then only the log's last entry is, for
// a follower behind the live messages (it reads the log on a gap). Returns
// {log length, subscribers reached}; {0, 0} when the job is finished,
// {-1, 0} when its record is gone, {-2, 0} when a later attempt owns it,
// {-3, n} when entry from would leave a gap after the log's n entries.
// KEYS: job, events, ahead. ARGV[1]: syncArgs JSON.
var syncEvents = redis.NewScript(lua(ownsLua, settleLua, `
local a = cjson.decode(ARGV[1])
local job, events, ahead = KEYS[1], KEYS[2], KEYS[3]
local st, f = state(job)
if not st then return {-1, 0} end
if terminal(st) then return {0, 0} end
if st ~= ACTIVE or f ~= a.fence then return {-2, 0} end
local n = redis.call('LLEN', events)
if a.from > n + 1 then return {-3, n} end
local out = {}
for i = math.max(2, n + 3 - a.from), #ARGV do out[#out + 1] = ARGV[i] end -- ARGV[i] is seq from+i-2
push(events, out)
if n == 0 and #out > 0 then redis.call('EXPIRE', events, a.ttl) end -- finish sets it again
redis.call('DEL', ahead)
local reached = 0
if a.live then
  if n + #out > 0 then reached = redis.call(a.publish, a.channel, redis.call('LINDEX', events, -1)) end
else
  for _, e in ipairs(out) do reached = redis.call(a.publish, a.channel, e) end
end
return {n + #out, reached}
`))

// syncArgs are syncEvents' arguments.
type syncArgs struct {
	TTL     int64  `json:"ttl"` // s: a log the sync starts is kept that long
	Fence   int    `json:"fence"`
	From    int64  `json:"from"`
	Live    bool   `json:"live"`
	Channel string `json:"channel"`
	Publish string `json:"publish"`
}

// SyncEvents writes the events of an attempt (fence) that its log does not
// hold yet: those it published ahead, then entries (Entry), numbered from
// seq `from` on. live: its followers had them; only the log's last entry is
// published. Returns how many subscribers were reached. ErrJobFinished,
// ErrSuperseded, ErrNotFound as AppendEvent.
func (s *Store) SyncEvents(ctx context.Context, id string, fence int, from int64, entries []string, live bool) (int64, error) {
	argv := make([]any, 0, 1+len(entries))
	argv = append(argv, argsJSON(syncArgs{TTL: s.keep(), Fence: fence, From: from, Live: live, Channel: rkeys.LiveChannel(id), Publish: s.publish}))
	for _, e := range entries {
		argv = append(argv, e)
	}
	res, err := syncEvents.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Events(id), rkeys.Ahead(id)}, argv...).Int64Slice()
	switch {
	case err != nil:
		return 0, unavailable("sync events", err)
	case len(res) != 2:
		return 0, fmt.Errorf("sync events: unexpected reply %v", res)
	case res[0] == 0:
		return 0, ErrJobFinished
	case res[0] == -1:
		return 0, ErrNotFound
	case res[0] == -2:
		return 0, ErrSuperseded
	case res[0] == -3:
		return 0, fmt.Errorf("sync events: seq %d would follow the log's %d entries with a gap", from, res[1])
	}
	return res[1], nil
}

// PublishAhead sends one event of an attempt (fence; base: the seq of its
// first event) live, ahead of the log: it is kept on the job's Ahead list
// and published, in a pipeline shared with every other job's of this
// process. first: the attempt's first such event (the list is given the
// log's lifetime). Returns how many subscribers it reached.
func (s *Store) PublishAhead(ctx context.Context, id string, fence int, base, seq int64, entry string, first bool) (int64, error) {
	r := &aheadReq{id: id, item: strconv.Itoa(fence) + " " + entry,
		msg: LiveMark + strconv.FormatInt(base, 10) + " " + entry, first: first, done: make(chan struct{})}
	s.ahead.add(s, r)
	select {
	case <-r.done:
		return r.reached, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// aheadWriter pipelines the live events of all of a process's jobs: while
// one pipeline is in flight the next ones gather, so the round trips fall
// as the load rises.
type aheadWriter struct {
	mu      sync.Mutex
	pending []*aheadReq
	busy    bool
}

type aheadReq struct {
	id, item, msg string
	first         bool
	done          chan struct{}
	reached       int64
	err           error
}

// aheadTimeout bounds one pipeline; a caller's own context may end sooner.
const aheadTimeout = 2 * time.Second

func (w *aheadWriter) add(s *Store, r *aheadReq) {
	w.mu.Lock()
	w.pending = append(w.pending, r)
	start := !w.busy
	w.busy = true
	w.mu.Unlock()
	if start {
		go w.run(s)
	}
}

func (w *aheadWriter) run(s *Store) {
	for {
		w.mu.Lock()
		batch := w.pending
		w.pending = nil
		if len(batch) == 0 {
			w.busy = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		s.writeAhead(batch)
	}
}

func (s *Store) writeAhead(batch []*aheadReq) {
	ctx, cancel := context.WithTimeout(context.Background(), aheadTimeout)
	defer cancel()
	sets, pubs := make([]*redis.IntCmd, len(batch)), make([]*redis.IntCmd, len(batch))
	_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range batch {
			key := rkeys.Ahead(r.id)
			sets[i] = p.RPush(ctx, key, r.item)
			if r.first {
				p.Expire(ctx, key, time.Duration(s.keep())*time.Second)
			}
			if s.publish == "SPUBLISH" {
				pubs[i] = p.SPublish(ctx, rkeys.LiveChannel(r.id), r.msg)
			} else {
				pubs[i] = p.Publish(ctx, rkeys.LiveChannel(r.id), r.msg)
			}
		}
		return nil
	})
	for i, r := range batch {
		r.reached, r.err = pubs[i].Val(), cmp.Or(sets[i].Err(), pubs[i].Err())
		if r.err != nil {
			r.err = unavailable("publish live event", r.err)
		}
		close(r.done)
	}
}

// reach reads how far a job's events go: the log's length and last entry,
// and the seqs past it that the running attempt sent live ahead of it.
// KEYS: job, events, ahead.
var reach = redis.NewScript(`
local seq = redis.call('LLEN', KEYS[2])
local last = redis.call('LINDEX', KEYS[2], -1) or ''
local fence = redis.call('HGET', KEYS[1], 'fence')
if fence then
  local prefix = fence .. ' '
  for _, item in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    if string.sub(item, 1, #prefix) == prefix and
      tonumber(string.match(item, '^%S+ %S+ {"seq":(%d+)')) == seq + 1 then seq = seq + 1 end
  end
end
return {seq, last}
`)

// Reach returns the highest seq a follower of job id may have read, live
// or from the log, and whether the log has ended with its final event
// (then seq is that event's).
func (s *Store) Reach(ctx context.Context, id string) (seq int64, final bool, err error) {
	res, err := reach.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Events(id), rkeys.Ahead(id)}).Slice()
	if err != nil {
		return 0, false, unavailable("read the job's events", err)
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("read the job's events: unexpected reply %v", res)
	}
	seq, _ = res[0].(int64)
	if last, _ := res[1].(string); last != "" {
		ev, err := ParseEvent(last)
		if err != nil {
			return 0, false, err
		}
		final = FinalEvent(ev.Type) && ev.Seq == seq
	}
	return seq, final, nil
}
