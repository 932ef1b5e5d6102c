package llm

import "github.com/redis/go-redis/v9"

// The capacity limiter's Lua scripts and their arguments (capacity.go
// runs them): every decision is one script, on Redis's clock.

// redisNowLua reads Redis's clock (ms), as the job leases do: the scripts
// keep every time on it, never on a process's clock.
const redisNowLua = `
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// acquireArgs are acquireScript's arguments.
type acquireArgs struct {
	Token         string
	Lease         int64 // ms
	Concurrency   int   // 0: none
	RPM, TPM      int   // the ceilings (0: none)
	Cost          int   // estimated tokens
	High          bool
	MaxWait       int64 // ms: the longest wait a reservation may have
	Adaptive      bool
	InitialLimit  int // where a learned concurrency limit starts
	ConfiguredRPM int // the quota, whose share of a second a window holds
}

func (a acquireArgs) argv() []any {
	return []any{a.Token, a.Lease, a.Concurrency, a.RPM, a.TPM, a.Cost, flag(a.High), a.MaxWait, flag(a.Adaptive),
		a.InitialLimit, a.ConfiguredRPM}
}

// acquireScript takes capacity for one call. It answers {1} (go now), {2,
// wait ms} (the rates are reserved and a slot held: go after wait, without
// asking again), or {0, wait ms, why} (ask again after wait; -1: when a slot
// may have freed up).
// Every time is Redis's (TIME), so that processes whose clocks disagree
// share the windows, leases and pauses.
// KEYS: leases, rpm, tpm, pause, adaptive, waiting, saturated.
// ARGV: acquireArgs.
var acquireScript = redis.NewScript(redisNowLua + `
local now = redis_now()
local function deny(wait, why)
  redis.call('SET', KEYS[7], why, 'PX', 10000)
  if ARGV[7] == '1' then redis.call('ZADD', KEYS[6], now + 2000, ARGV[1]) end
  return {0, wait, why}
end
local p = redis.call('PTTL', KEYS[4])
if p > 0 then return deny(p, 'paused') end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[7] ~= '1' then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  if redis.call('ZCARD', KEYS[6]) > 0 then return deny(-1, 'priority') end
end
local limit = tonumber(ARGV[3])
if ARGV[9] == '1' then
  redis.call('HSETNX', KEYS[5], 'limit', ARGV[10])
  limit = math.floor(tonumber(redis.call('HGET', KEYS[5], 'limit')))
end
local inflight = redis.call('ZCARD', KEYS[1])
if limit > 0 and inflight >= limit then return deny(-1, 'concurrency') end
-- GCRA for tokens: tat is when the bucket is full again; half a second's
-- quota may go at once, and one call larger than that when it is full.
local function gcra(key, perMinute, cost)
  local t = 60000 / perMinute
  local burst = math.max(1, math.floor(perMinute / 120), cost)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + cost * t
  return new, new - burst * t - now
end
-- Requests: no window holds more than the configured quota's share of a
-- second (limit, as strict providers count them), and the margin stretches
-- the window instead of shrinking that share: limit calls per w, w a little
-- over a second (longer while a 429 keeps the rate lowered). Each call comes
-- at least w after the call limit places before it, so the stretch is slack
-- for the jitter of every call's way to the provider; shrinking the share
-- instead would cost a whole window at the end of a burst at small quotas.
-- The window's calls (sent or reserved) are a sorted set of send times.
local function window(key, perMinute, configured)
  local limit = math.max(1, math.floor(configured / 60))
  local w = limit * 60000 / perMinute
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - w)
  local n = redis.call('ZCARD', key)
  local at = now
  if n >= limit then
    local e = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    at = math.max(at, tonumber(e[2]) + w)
  end
  return at, at - now, w
end
local rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
if rpm > 0 then -- lowered by a 429, recovering
  rpm = math.min(rpm, tonumber(redis.call('HGET', KEYS[5], 'rpm') or rpm))
end
local ra, rw, rwin, tn, tw = 0, 0, 0, 0, 0
if rpm > 0 then ra, rw, rwin = window(KEYS[2], rpm, tonumber(ARGV[11])) end
if tpm > 0 then tn, tw = gcra(KEYS[3], tpm, tonumber(ARGV[6])) end
local wait = math.ceil(math.max(rw, tw, 0))
if wait > tonumber(ARGV[8]) then
  if rw >= tw then return deny(wait, 'rpm') end
  return deny(wait, 'tpm')
end
if rpm > 0 then
  redis.call('ZADD', KEYS[2], ra, ARGV[1])
  local ttl = math.ceil(ra - now + rwin) + 1000
  if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
end
if tpm > 0 then redis.call('SET', KEYS[3], string.format('%.3f', tn), 'PX', math.ceil(tn - now) + 1000) end
redis.call('ZADD', KEYS[1], now + wait + tonumber(ARGV[2]), ARGV[1])
if ARGV[7] == '1' then redis.call('ZREM', KEYS[6], ARGV[1]) end
if wait > 0 then
  redis.call('SET', KEYS[7], 'rate', 'PX', 10000)
  return {2, wait, ''}
end
return {1, 0, ''}
`)

// releaseArgs are releaseScript's arguments.
type releaseArgs struct {
	Token             string
	TPM               int // the ceiling (0: none)
	Delta             int // tokens used minus estimated
	Adaptive, Success bool
	RPM               int // the ceiling (0: none)
}

func (a releaseArgs) argv() []any {
	return []any{a.Token, a.TPM, a.Delta, flag(a.Adaptive), flag(a.Success), a.RPM}
}

// releaseScript ends a call: frees its slot, settles the token estimate with
// the real usage and, after a success, raises the learned concurrency limit
// in adaptive mode (by 1 until the first 429, then by 1/limit) and a lowered
// request rate towards its ceiling (by a fiftieth of it). Returns {the
// learned limit (0: none), the effective request rate (0: none)}.
// KEYS: leases, tpm, adaptive. ARGV: releaseArgs.
var releaseScript = redis.NewScript(redisNowLua + `
redis.call('ZREM', KEYS[1], ARGV[1])
local ceil = tonumber(ARGV[6])
local rpm = ceil
if ceil > 0 then
  local e = tonumber(redis.call('HGET', KEYS[3], 'rpm') or '0')
  if e > 0 then
    rpm = e
    if ARGV[5] == '1' then
      rpm = e + ceil / 50
      if rpm >= ceil then
        rpm = ceil
        redis.call('HDEL', KEYS[3], 'rpm')
      else
        redis.call('HSET', KEYS[3], 'rpm', string.format('%.3f', rpm))
      end
    end
  end
end
local tpm, delta, now = tonumber(ARGV[2]), tonumber(ARGV[3]), redis_now()
if tpm > 0 and delta ~= 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat > 0 then
    local new = tat + delta * 60000 / tpm
    if new > now then
      redis.call('SET', KEYS[2], string.format('%.3f', new), 'PX', math.ceil(new - now) + 1000)
    else
      redis.call('DEL', KEYS[2])
    end
  end
end
local l = 0
if ARGV[4] == '1' then
  l = tonumber(redis.call('HGET', KEYS[3], 'limit') or '0')
  if l > 0 and ARGV[5] == '1' then
    if redis.call('HEXISTS', KEYS[3], 'decreased_at') == 0 then
      l = l + 1 -- slow start: doubles every round of calls until the first 429
    else
      l = l + 1 / l -- then one more slot per limit successes
    end
    l = math.min(l, 100000)
    redis.call('HSET', KEYS[3], 'limit', string.format('%.4f', l))
  end
end
return {math.floor(l), math.floor(rpm)}
`)

// rateLimitedArgs are rateLimitedScript's arguments.
type rateLimitedArgs struct {
	Token    string
	Pause    int64 // ms
	Adaptive bool
	RPM      int // the ceiling (0: none)
}

func (a rateLimitedArgs) argv() []any { return []any{a.Token, a.Pause, flag(a.Adaptive), a.RPM} }

// rateLimitedScript records a 429: frees the call's slot, pauses the provider
// for the whole fleet and, in adaptive mode, halves the concurrency limit
// (once per pause: the 429s of one burst count once). With a configured
// request rate it lowers the effective rate by a fifth (at most once a
// second) and, for a near miss (a Retry-After of a second or none), pauses
// only until the next request the lowered rate allows: the provider's
// one-second granularity would otherwise idle every worker for a whole
// second. The learned limits are forgotten after ten minutes without a 429.
// Returns {the learned limit, the effective request rate}.
// KEYS: leases, pause, adaptive. ARGV: rateLimitedArgs.
var rateLimitedScript = redis.NewScript(redisNowLua + `
redis.call('ZREM', KEYS[1], ARGV[1])
local pause, now, ceil = tonumber(ARGV[2]), redis_now(), tonumber(ARGV[4])
local rpm = 0
if ceil > 0 then
  rpm = tonumber(redis.call('HGET', KEYS[3], 'rpm') or ceil)
  local last = tonumber(redis.call('HGET', KEYS[3], 'rpm_decreased_at') or '0')
  if now - last >= 1000 then
    rpm = math.max(1, ceil / 10, rpm * 0.8)
    redis.call('HSET', KEYS[3], 'rpm', string.format('%.3f', rpm), 'rpm_decreased_at', now)
  end
  redis.call('EXPIRE', KEYS[3], 600)
  if pause <= 1000 then pause = math.min(pause, math.ceil(60000 / rpm)) end
end
if redis.call('PTTL', KEYS[2]) < pause then redis.call('SET', KEYS[2], '1', 'PX', pause) end
if ARGV[3] ~= '1' then return {0, math.floor(rpm)} end
local cur = tonumber(redis.call('HGET', KEYS[3], 'limit') or '0')
local last = tonumber(redis.call('HGET', KEYS[3], 'decreased_at') or '0')
if now - last >= pause then
  local inflight = redis.call('ZCARD', KEYS[1]) + 1
  if cur == 0 or cur > inflight then cur = inflight end
  cur = math.max(1, math.floor(cur / 2))
  redis.call('HSET', KEYS[3], 'limit', cur, 'decreased_at', now)
end
redis.call('EXPIRE', KEYS[3], 600) -- forgotten after ten quiet minutes
return {math.floor(cur), 0}
`)

// renewScript extends a running call's lease, if it still holds one.
// KEYS: leases. ARGV: token, lease ms.
var renewScript = redis.NewScript(redisNowLua + `
return redis.call('ZADD', KEYS[1], 'XX', redis_now() + tonumber(ARGV[2]), ARGV[1])
`)

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
