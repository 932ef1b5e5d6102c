package store

import "github.com/redis/go-redis/v9"

// Each script changes one job atomically, so no reader ever sees half a change
// and a retried call never applies twice.

// createJob writes a new record and appends the job to its session's order, or
// returns the existing record's body hash.
// KEYS: job, order. ARGV: id, retention seconds, then field/value pairs.
var createJob = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'body_hash') or ''}
end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {1, ''}
`)

// deleteJob undoes createJob when the enqueue that follows it fails.
// KEYS: job, order. ARGV: id.
var deleteJob = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('LREM', KEYS[2], 0, ARGV[1])
return 1
`)

// markActive starts an attempt. Returns the attempt number, or 0 when the job is
// already finished. KEYS: job. ARGV: now.
var markActive = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'active')
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
`)

// markRetrying records a failed attempt that will be retried.
// KEYS: job. ARGV: error json.
var markRetrying = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'active' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'retrying', 'error', ARGV[1])
return 1
`)

// finish ends a job once: sets the terminal status and its fields, appends the
// history entries if any, and releases the session's turn. Returns 1 when this
// call finished the job, 0 when it was already finished, -1 when the record is gone.
// KEYS: job, order, history.
// ARGV: id, status, finished_at, retention s, history max, history ttl s,
// result json, usage json, error json, then history entries.
var finish = redis.NewScript(`
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
if #ARGV > 9 then
  for i = 10, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
redis.call('LREM', KEYS[2], 0, ARGV[1])
return 1
`)
