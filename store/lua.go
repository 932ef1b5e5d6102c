package store

import (
	"encoding/json"
	"fmt"
	"strings"
)

// The job scripts. Each changes one job atomically, so no reader ever sees
// half a change and a retried call never applies twice; each touches keys of
// one bucket only (rkeys): the job's, its session's and the bucket's indexes,
// so that it runs on Redis Cluster. A script lives beside the Go function
// that calls it. It takes its arguments by name: ARGV[1] is one Go struct
// with json tags, serialised by argsJSON and decoded once at the script's
// top (local a = cjson.decode(ARGV[1])); a script whose call carries large
// opaque blobs (a record's field/value pairs, event bodies) may take them as
// a list after it, ARGV[2..], read in a loop and described at the script's
// top. The shared fragments take named values, never a place in ARGV. The
// fragments below are shared.
//
// cjson decodes numbers as doubles (exact below 2^53: ms timestamps, token
// counts) and null as cjson.null, not nil: the structs send no nulls (empty
// strings, zeros and empty lists instead, or omitempty where the script
// tests for a field's absence).

// statusLua names the job statuses in Lua, from the Go constants.
var statusLua = fmt.Sprintf(`
local QUEUED, ACTIVE, RETRYING = %q, %q, %q
local SUCCEEDED, FAILED, CANCELED = %q, %q, %q
local function terminal(st) return st == SUCCEEDED or st == FAILED or st == CANCELED end
`, StatusQueued, StatusActive, StatusRetrying, StatusSucceeded, StatusFailed, StatusCanceled)

// ownsLua: an attempt may write only while the job is active and no later
// attempt has started (fencing: a paused worker that comes back cannot
// write). state reads the status (nil: no record) and the fence token of the
// latest attempt at once; an attempt names itself by its token.
var ownsLua = statusLua + `
local function state(job)
  local v = redis.call('HMGET', job, 'status', 'fence')
  return v[1], tonumber(v[2])
end
local function owns(job, fence)
  local st, f = state(job)
  return st == ACTIVE and f == tonumber(fence)
end
`

// holdLua keeps a waiting job's record, session order and event log alive
// for at least ttl seconds: a job that waits in the queue must still have
// them when it runs (a log that expired would restart its sequence at 1, and
// its followers would skip every new event). A log not yet written stays
// absent: its first event sets its TTL.
const holdLua = `
local function hold(job, order, events, ttl)
  ttl = tonumber(ttl)
  if redis.call('TTL', job) < ttl then redis.call('EXPIRE', job, ttl) end
  if redis.call('TTL', order) < ttl then redis.call('EXPIRE', order, ttl) end
  local t = redis.call('TTL', events)
  if t ~= -2 and t < ttl then redis.call('EXPIRE', events, ttl) end
end
`

// extendLua keeps a key for at least ttl seconds: it lengthens a shorter
// TTL and never shortens one (nor creates the key).
const extendLua = `
local function extend(key, ttl)
  ttl = tonumber(ttl)
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end
`

// redisNowLua reads Redis's clock (ms). Leases are written, renewed and
// claimed with it, so no process's clock decides whether a lease expired.
const redisNowLua = `
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// argsJSON encodes a script's arguments (a struct with json tags) for
// ARGV[1].
func argsJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode script arguments %T: %v", v, err)) // plain fields only: cannot fail
	}
	return string(b)
}

// lua joins script fragments.
func lua(parts ...string) string { return strings.Join(parts, "\n") }

// intAt reads the integer a script returned at position i of its reply.
func intAt(res []any, i int, script string) (int64, error) {
	if i < len(res) {
		if n, ok := res[i].(int64); ok {
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s: unexpected reply %v", script, res)
}
