package store

import "github.com/redis/go-redis/v9"

// Each script changes one job atomically, so no reader ever sees half a change
// and a retried call never applies twice.

// Every job script touches keys of one bucket only (rkeys): the job's, its
// session's and the bucket's indexes, so that it runs on Redis Cluster.

// createJobLua writes a new record from ARGV[from] on (field/value pairs),
// appends the job to its session's order and indexes it for the reconciler.
// It returns true when the job holds its session's turn: only then does its
// task go to the queue; a job behind others waits here for its turn (order.go),
// its check far off (the release that gives it the turn brings it forward).
// KEYS: job, order, unfinished. ARGV: id, retention s, now ms, unfinished
// member, first check ms, waiting check ms, ….
const createJobLua = `
local function create_job(from)
  local fields = {}
  for i = from, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  local head = redis.call('RPUSH', KEYS[2], ARGV[1]) == 1
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  local check = head and ARGV[5] or ARGV[6]
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(check), ARGV[4])
  return head
end
`

// createJob writes a new record (createJobLua). Returns 1 when the job holds
// its session's turn, 2 when it waits behind an earlier job, 0 when the
// record exists. ARGV from 7: the record's field/value pairs.
var createJob = redis.NewScript(createJobLua + `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if create_job(7) then return 1 end
return 2
`)

// createAndEnqueue writes a new record and, when the job holds its session's
// turn, enqueues its asynq task in the same step, on one Redis (asynq's keys
// are in another slot on a cluster): the task is written exactly as asynq's
// own enqueue script writes it. Returns 1 (created and enqueued), 2 (created,
// waiting for its turn: no task yet), 0 when the record exists, -1 when a task
// with the id exists (nothing was written; the caller takes the two-step
// path, which handles that).
// KEYS: job, order, unfinished, task, pending list, queue set.
// ARGV: as createJob to 6, then the task message, now ns, queue, then the
// record's field/value pairs.
var createAndEnqueue = redis.NewScript(createJobLua + `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('LLEN', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
if not create_job(10) then return 2 end
redis.call('HSET', KEYS[4], 'msg', ARGV[7], 'state', 'pending', 'pending_since', ARGV[8])
redis.call('LPUSH', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[9])
return 1
`)

// countTenantJob counts a job among its tenant's unfinished jobs, or returns
// 0 when the tenant is at its limit. A job already counted is admitted again.
// KEYS: tenant jobs. ARGV: id, retention s, max unfinished, now ms.
var countTenantJob = redis.NewScript(`
local now = tonumber(ARGV[4])
-- entries older than the retention belong to jobs whose records expired
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]) * 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
`)

// bindKey binds an Idempotency-Key to a job id unless it is bound already,
// and returns the id it is bound to. KEYS: binding. ARGV: id, ttl s.
var bindKey = redis.NewScript(`
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
`)

// unbindKey undoes bindKey for a job that was not made. KEYS: binding. ARGV: id.
var unbindKey = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
`)

// deleteJob undoes createJob when the enqueue that follows it fails. A job
// submitted behind it meanwhile gets the turn: returned as releaseLua does.
// KEYS: job, order, unfinished. ARGV: id, unfinished member, then releaseArgs.
var deleteJob = redis.NewScript(releaseLua + `
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[2])
return {release(KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])}
`)

// startAttempt starts an attempt in one round trip: it checks the session's
// turn, marks the job active, takes the attempt's lease and reads the
// session's history. Returns {'wait', head} when an earlier job holds the
// turn (a task that arrived early, from an older API: the job is pointed at
// the fresh task id ARGV[6], which the release that gives it the turn
// enqueues), {'done'} when the job has finished or another task now runs it (it was
// taken over), {'gone'} when its record is gone, else {'run', attempt, history…}.
// The attempt's fence token, one more than any before it (never reset: a
// deferral gives back an attempt's number, a re-run restarts the count),
// fences every earlier attempt out and names its lease.
// KEYS: job, order, history, leases. ARGV: id, now, 1 to read the history,
// task id, lease ms, fresh task id.
var startAttempt = redis.NewScript(redisNowLua + `
local rec = redis.call('HMGET', KEYS[1], 'status', 'task', 'attempts', 'started_at')
local st, task = rec[1], rec[2]
if not st then return {'gone'} end
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return {'done'} end
if task and task ~= ARGV[4] then return {'done'} end
local head = redis.call('LINDEX', KEYS[2], 0)
if head and head ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'task', ARGV[6])
  return {'wait', head}
end
local n = (tonumber(rec[3]) or 0) + 1
local f = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'status', 'active', 'attempts', n, 'started_at', rec[4] or ARGV[2])
redis.call('ZADD', KEYS[4], redis_now() + tonumber(ARGV[5]), ARGV[1] .. ':' .. f)
local out = {'run', tostring(n), tostring(f)}
if ARGV[3] == '1' then
  for _, m in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do out[#out + 1] = m end
end
return out
`)

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

// ownsLua: an attempt may write only while the job is active and no later
// attempt has started (fencing: a paused worker that comes back cannot
// write). state reads the status (nil: no record) and the fence token of the
// latest attempt at once; an attempt names itself by its token.
const ownsLua = `
local function state(job)
  local v = redis.call('HMGET', job, 'status', 'fence')
  return v[1], tonumber(v[2])
end
local function owns(job, fence)
  local st, f = state(job)
  return st == 'active' and f == tonumber(fence)
end
`

// markDeferred hands back an attempt that never reached a provider (every
// breaker open, or no capacity): queued again, its attempt not counted.
// KEYS: job, order, leases, events. ARGV: ttl s, attempt, lease member.
var markDeferred = redis.NewScript(holdLua + ownsLua + `
if not owns(KEYS[1], ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('ZREM', KEYS[3], ARGV[3])
hold(KEYS[1], KEYS[2], KEYS[4], ARGV[1])
return 1
`)

// markRetrying records a failed attempt that will be retried.
// KEYS: job, order, leases, events. ARGV: error json, ttl s, attempt, lease member.
var markRetrying = redis.NewScript(holdLua + ownsLua + `
if not owns(KEYS[1], ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'retrying', 'error', ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[4])
hold(KEYS[1], KEYS[2], KEYS[4], ARGV[2])
return 1
`)

// abandon ends an attempt cut short by a shutdown: its lease expires now, so
// that a rescuer takes the job over at once. KEYS: job, leases. ARGV: attempt, lease member.
var abandon = redis.NewScript(ownsLua + `
if not owns(KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', 0, ARGV[2])
return 1
`)

// takeOver hands a job whose attempt lost its lease to a new task: the job is
// queued again under the new task id, which fences the old attempt out; the
// stale task, if asynq ever runs it again, finds another task owns the job.
// Either way the claimed lease is done with and leaves the index.
// Returns {1, payload, queue}, or {0} when the attempt had ended anyway.
// KEYS: job, leases. ARGV: attempt, new task id, lease member.
var takeOver = redis.NewScript(ownsLua + `
redis.call('ZREM', KEYS[2], ARGV[3])
if not owns(KEYS[1], ARGV[1]) then return {0} end
redis.call('HSET', KEYS[1], 'status', 'queued', 'task', ARGV[2])
return {1, redis.call('HGET', KEYS[1], 'payload') or '', redis.call('HGET', KEYS[1], 'queue') or ''}
`)

// redisNowLua reads Redis's clock (ms). Leases are written, renewed and
// claimed with it, so no process's clock decides whether a lease expired.
const redisNowLua = `
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// renewLeases extends running attempts' leases that still exist.
// KEYS: the bucket's leases. ARGV: lease ms, members.
var renewLeases = redis.NewScript(redisNowLua + `
local expiry = redis_now() + tonumber(ARGV[1])
local args = {}
for i = 2, #ARGV do args[#args + 1] = expiry; args[#args + 1] = ARGV[i] end
return redis.call('ZADD', KEYS[1], 'XX', unpack(args))
`)

// claimDue takes up to ARGV[1] members whose score is due by Redis's clock
// and moves them ARGV[2] ms ahead, so that one caller handles each, and a
// caller that dies before it is done leaves them to be claimed again:
// unfinished jobs whose check is due (the reconciler), expired leases (the
// rescuer). KEYS: the sorted set. ARGV: limit, claim ms.
var claimDue = redis.NewScript(redisNowLua + `
local now = redis_now()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local next = now + tonumber(ARGV[2])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', next, m) end
return due
`)

// retask points a queued job at a new task (its old one was lost or finished).
// KEYS: job. ARGV: task id. Returns 0 unless the job is queued or retrying.
var retask = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' and st ~= 'retrying' then return 0 end
redis.call('HSET', KEYS[1], 'task', ARGV[1])
return 1
`)

// holdJob keeps a job that waits without an attempt alive. KEYS: job, order, events. ARGV: ttl s.
var holdJob = redis.NewScript(holdLua + `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
hold(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return 1
`)

// appendEventLua appends one event to a job's log and publishes it, in one
// step, so a subscriber that subscribes first and then reads the log misses
// nothing. seq is the event's 1-based position in the log; it is spliced into
// the JSON body, which arrives without it. publish is PUBLISH, or SPUBLISH on
// Redis Cluster (the channel then lives on the job's shard).
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
  redis.call(publish, channel, entry)
  return seq
end
`

// appendEvent adds an event to a running job. Returns the event's seq, 0 when
// the job is already finished (nothing may follow its last event), -1 when the
// record is gone, -2 when a later attempt owns the job (this one is fenced out).
// KEYS: job, events. ARGV: type, body, retention s, channel, attempt (0:
// unfenced), publish command.
var appendEvent = redis.NewScript(appendEventLua + ownsLua + `
local st, n = state(KEYS[1])
if not st then return -1 end
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return 0 end
if tonumber(ARGV[5]) > 0 and (st ~= 'active' or n ~= tonumber(ARGV[5])) then return -2 end
return append_event(KEYS[2], ARGV[4], ARGV[1], ARGV[2], ARGV[3], ARGV[6])
`)

// finish ends a job once: sets the terminal status and its fields, appends the
// final event (done, error or canceled) to the log, appends the history entries
// if any, releases the session's turn and drops the job from the indexes.
// An attempt's finish is fenced: it applies only while that attempt owns the
// job. Returns {1} when this call finished the job, {0} when it was already
// finished (or the attempt was fenced out), {-1} when the record is gone;
// the session's next job (releaseLua) follows when this made its turn.
// KEYS: job, order, history, events, leases, unfinished.
// ARGV: id, status, finished_at, retention s, history max, history ttl s,
// result json, usage json, error json, event type, event body, channel,
// attempt (0: not an attempt's), unfinished member, publish command, the
// body of a token event to append before the final one (empty for none: the
// rest of a reply that had not gone out yet), the tenant, the session, the
// jobs' key prefix, the next job's check ms (releaseArgs), then history entries.
var finish = redis.NewScript(releaseLua + appendEventLua + ownsLua + `
local function released()
  return release(KEYS[2], KEYS[6], ARGV[1], ARGV[17], ARGV[18], ARGV[19], ARGV[20])
end
local st, n = state(KEYS[1])
if not st then
  redis.call('ZREM', KEYS[6], ARGV[14])
  return {-1, released()}
end
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return {0} end
local att = tonumber(ARGV[13])
if att > 0 then
  if st ~= 'active' or n ~= att then return {0} end
  redis.call('ZREM', KEYS[5], ARGV[1] .. ':' .. att)
end
redis.call('ZREM', KEYS[6], ARGV[14])
local fields = {'status', ARGV[2], 'finished_at', ARGV[3]}
for i, f in ipairs({'result', 'usage', 'error'}) do
  if ARGV[6 + i] ~= '' then fields[#fields + 1] = f; fields[#fields + 1] = ARGV[6 + i] end
end
redis.call('HSET', KEYS[1], unpack(fields))
-- the payload was only needed to run the job again
if ARGV[9] ~= '' then redis.call('HDEL', KEYS[1], 'payload') else redis.call('HDEL', KEYS[1], 'payload', 'error') end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[16] ~= '' then append_event(KEYS[4], ARGV[12], 'token', ARGV[16], ARGV[4], ARGV[15]) end
if append_event(KEYS[4], ARGV[12], ARGV[10], ARGV[11], ARGV[4], ARGV[15]) > 1 then
  redis.call('EXPIRE', KEYS[4], ARGV[4]) -- the log lives as long as the record
end
if #ARGV > 20 then
  for i = 21, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
return {1, released()}
`)

// requeue reopens a failed job for another run: it is queued again at the
// end of its session's order, indexed as unfinished again. Returns 0 when
// the job has not failed, 1 when it holds its session's turn (its task is to
// be enqueued now), 2 when it waits behind an earlier job.
// KEYS: job, order, unfinished. ARGV: id, retention s, now ms, member,
// payload, first check ms, waiting check ms.
var requeue = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'payload', ARGV[5])
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0)
redis.call('HDEL', KEYS[1], 'error', 'finished_at', 'started_at')
redis.call('EXPIRE', KEYS[1], ARGV[2])
local head = redis.call('RPUSH', KEYS[2], ARGV[1]) == 1
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(head and ARGV[6] or ARGV[7]), ARGV[4])
if head then return 1 end
return 2
`)
