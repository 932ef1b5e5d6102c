package store

import "github.com/redis/go-redis/v9"

// Each script changes one job atomically, so no reader ever sees half a change
// and a retried call never applies twice.

// createJob writes a new record, appends the job to its session's order and
// counts it among its tenant's unfinished jobs; or returns the existing
// record's body hash; or -1 when the tenant is at its limit of unfinished jobs.
// KEYS: job, order, tenant jobs.
// ARGV: id, retention s, max unfinished (0: no limit), now ms, then field/value pairs.
var createJob = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'body_hash') or ''}
end
local now = tonumber(ARGV[4])
if tonumber(ARGV[3]) > 0 then
  -- entries older than the retention belong to jobs whose records expired
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]) * 1000)
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return {-1, ''} end
end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {1, ''}
`)

// deleteJob undoes createJob when the enqueue that follows it fails.
// KEYS: job, order, tenant jobs. ARGV: id.
var deleteJob = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
`)

// startAttempt starts an attempt in one round trip: it checks the session's
// turn, marks the job active and reads the session's history. Returns
// {'wait', head} when an earlier job holds the turn, {'done'} when the job has
// finished, {'gone'} when its record is gone, else {'run', attempt, history…}.
// KEYS: job, order, history. ARGV: id, now, 1 to read the history.
var startAttempt = redis.NewScript(`
local head = redis.call('LINDEX', KEYS[2], 0)
if head and head ~= ARGV[1] then return {'wait', head} end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'gone'} end
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return {'done'} end
redis.call('HSET', KEYS[1], 'status', 'active')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
local out = {'run', tostring(redis.call('HINCRBY', KEYS[1], 'attempts', 1))}
if ARGV[3] == '1' then
  for _, m in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do out[#out + 1] = m end
end
return out
`)

// holdLua keeps a waiting job's record and session order alive for at least
// ttl seconds: a job that waits in the queue must still have them when it runs.
const holdLua = `
local function hold(job, order, ttl)
  ttl = tonumber(ttl)
  if redis.call('TTL', job) < ttl then redis.call('EXPIRE', job, ttl) end
  if redis.call('TTL', order) < ttl then redis.call('EXPIRE', order, ttl) end
end
`

// markDeferred hands back an attempt that never reached a provider (every
// breaker open, or no capacity): queued again, its attempt not counted.
// KEYS: job, order. ARGV: ttl s.
var markDeferred = redis.NewScript(holdLua + `
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'status', 'queued')
hold(KEYS[1], KEYS[2], ARGV[1])
return 1
`)

// markRetrying records a failed attempt that will be retried.
// KEYS: job, order. ARGV: error json, ttl s.
var markRetrying = redis.NewScript(holdLua + `
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'active' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'retrying', 'error', ARGV[1])
hold(KEYS[1], KEYS[2], ARGV[2])
return 1
`)

// holdJob keeps a job that waits without an attempt alive. KEYS: job, order. ARGV: ttl s.
var holdJob = redis.NewScript(holdLua + `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
hold(KEYS[1], KEYS[2], ARGV[1])
return 1
`)

// appendEventLua appends one event to a job's log and publishes it, in one
// step, so a subscriber that subscribes first and then reads the log misses
// nothing. seq is the event's 1-based position in the log; it is spliced into
// the JSON body, which arrives without it.
const appendEventLua = `
local function append_event(events, channel, typ, body, ttl)
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
  redis.call('PUBLISH', channel, entry)
  return seq
end
`

// appendEvent adds an event to a running job. Returns the event's seq, 0 when
// the job is already finished (nothing may follow its last event), -1 when the
// record is gone. KEYS: job, events. ARGV: type, body, retention s, channel.
var appendEvent = redis.NewScript(appendEventLua + `
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return 0 end
return append_event(KEYS[2], ARGV[4], ARGV[1], ARGV[2], ARGV[3])
`)

// finish ends a job once: sets the terminal status and its fields, appends the
// final event (done, error or canceled) to the log, appends the history entries
// if any, and releases the session's turn. Returns 1 when this call finished
// the job, 0 when it was already finished, -1 when the record is gone.
// KEYS: job, order, history, events, tenant jobs.
// ARGV: id, status, finished_at, retention s, history max, history ttl s,
// result json, usage json, error json, event type, event body, channel,
// then history entries.
var finish = redis.NewScript(appendEventLua + `
redis.call('ZREM', KEYS[5], ARGV[1])
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  return -1
end
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'usage', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[9]) else redis.call('HDEL', KEYS[1], 'error') end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if append_event(KEYS[4], ARGV[12], ARGV[10], ARGV[11], ARGV[4]) > 1 then
  redis.call('EXPIRE', KEYS[4], ARGV[4]) -- the log lives as long as the record
end
if #ARGV > 12 then
  for i = 13, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
redis.call('LREM', KEYS[2], 0, ARGV[1])
return 1
`)

// requeue reopens a failed job for another run: it is queued again at the
// end of its session's order. KEYS: job, order, tenant jobs. ARGV: id, retention s, now ms.
var requeue = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then return 0 end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0)
redis.call('HDEL', KEYS[1], 'error', 'finished_at', 'started_at')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
`)
