package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// The scheduler holds the jobs whose session turn has come and decides which
// one a worker gets next (jobs/dispatch.go drives it). Its keys share the tag
// {sched}, so that a decision is one script. With P = rkeys.SchedPrefix():
//
//	P jobs              hash  job id -> its place as JSON (lane, tenant, model, session, entry): the jobs waiting here
//	P q:<lane>:<tenant>:<model>  list  "<created ms>|<job id>", in the order they may run
//	P tm:<lane>:<tenant>  zset  models of the tenant's lane with a runnable head, by the head's created ms
//	P lane:<lane>       zset  tenants of the lane with a runnable model, by pass (virtual time)
//	P pass:<lane>       hash  tenant -> pass, while the tenant has nothing runnable in the lane
//	P vt                hash  lane -> pass of the last job dispatched from it (the lane's virtual time)
//	P w                 hash  tenant -> weight (written by each submit from CHATFLEET_TENANT_WEIGHTS)
//	P swrr              hash  lane -> current weight of the smooth weighted round robin over lanes
//	P blocked           zset  model -> until (ms): models at their quota
//	P bw:<model>        set   "lane\ntenant" whose queue of the model waits for it
//	P probe, P pw       hash  model -> quiet probe windows so far, and its window (ms)
//	P ml:<lane>:<model> zset  job id -> queued at (ms): counts and oldest age per lane and model
//	P tc                zset  tenant -> jobs waiting here
//	P models            set   models with jobs here
//	P handed            string jobs handed out so far (the fleet's drain rate)
//
// Fairness: each lane serves its tenants by stride scheduling. A tenant's
// pass grows by 1/weight with each job it gets, the tenant with the lowest
// pass goes next, and a tenant that comes back after a pause starts at the
// lane's virtual time, so it neither jumps ahead with saved-up credit nor
// waits behind a backlog. Lanes are chosen first, by smooth weighted round
// robin (tasks.LaneWeights: 6:3:1), among lanes that have a runnable job; a
// lone tenant or lane gets every slot.
//
// Capacity: a model whose deployments were found at quota is blocked until
// the time the limiter gave. Its jobs stay in their lists; each tenant queue
// of it is set aside once (moved from tm to bw) when a dispatch meets it, and
// put back when the block ends. So a blocked model costs nothing while it
// waits, and each dispatch is O(log n) in tenants and models. When the block
// ends the model is probed: one job per window (P pw: model -> ms), until
// probeWindows windows pass with no job given back (P probe: model -> quiet
// windows).

// schedLua: the helpers the scheduler's scripts share. P is the prefix.
const schedLua = `
local function headAt(entry) return tonumber(entry:match('^(%d+)|')) end
-- hset writes a field of the scheduler's bookkeeping (weights, passes,
-- virtual times, lane state), which lives on while it is written: it goes
-- a while after the last job did (keepTouched, once per key and script).
local touched = {}
local function hset(key, field, value)
  redis.call('HSET', key, field, value)
  touched[key] = true
end
local function keepTouched(keep)
  for k in pairs(touched) do redis.call('EXPIRE', k, keep) end
end
-- activate puts a tenant with a runnable model into its lane's rotation, at
-- the lane's virtual time or its own saved pass, whichever is later.
local function activate(P, lane, tenant)
  if redis.call('ZCARD', P .. 'tm:' .. lane .. ':' .. tenant) == 0 then return end
  if redis.call('ZSCORE', P .. 'lane:' .. lane, tenant) then return end
  local saved = tonumber(redis.call('HGET', P .. 'pass:' .. lane, tenant)) or 0
  local vt = tonumber(redis.call('HGET', P .. 'vt', lane)) or 0
  redis.call('HDEL', P .. 'pass:' .. lane, tenant)
  redis.call('ZADD', P .. 'lane:' .. lane, math.max(saved, vt), tenant)
end
local function count(P, a, by)
  if by > 0 then
    redis.call('HSET', P .. 'jobs', a.id, cjson.encode({lane = a.lane, tenant = a.tenant, model = a.model, session = a.session, entry = a.at .. '|' .. a.id}))
    redis.call('ZADD', P .. 'ml:' .. a.lane .. ':' .. a.model, a.now, a.id)
    redis.call('SADD', P .. 'models', a.model)
    redis.call('EXPIRE', P .. 'models', a.keep)
  end
  if tonumber(redis.call('ZINCRBY', P .. 'tc', by, a.tenant)) <= 0 then redis.call('ZREM', P .. 'tc', a.tenant) end
end
`

// scheduleLua: schedule(a) adds a job whose turn has come at the back of its
// queue and nudges the dispatchers; 0 when the job is there already.
const scheduleLua = `
local function schedule(a)
  local P = a.prefix
  if redis.call('HEXISTS', P .. 'jobs', a.id) == 1 then return 0 end
  local q = P .. 'q:' .. a.lane .. ':' .. a.tenant .. ':' .. a.model
  if redis.call('RPUSH', q, a.at .. '|' .. a.id) == 1 then
    redis.call('ZADD', P .. 'tm:' .. a.lane .. ':' .. a.tenant, a.at, a.model)
  end
  hset(P .. 'w', a.tenant, a.weight)
  activate(P, a.lane, a.tenant)
  count(P, a, 1)
  keepTouched(a.keep)
  redis.call(a.publish, P .. 'nudge', '1')
  return 1
end
`

// scheduleJob schedules a job (scheduleLua).
// KEYS: jobs. ARGV: schedArgs as JSON.
var scheduleJob = redis.NewScript(lua(schedLua, scheduleLua, `
return schedule(cjson.decode(ARGV[1]))
`))

// giveBackJob puts a job that found its model at quota back at the front of
// its queue and blocks the model until a.until (ms): no job of it is handed
// out before. Returns 0 when the job is here already.
// KEYS: jobs. ARGV: schedArgs as JSON.
var giveBackJob = redis.NewScript(lua(schedLua, `
local a = cjson.decode(ARGV[1])
local P = a.prefix
if redis.call('HEXISTS', KEYS[1], a.id) == 1 then return 0 end
local blocked = tonumber(redis.call('ZSCORE', P .. 'blocked', a.model))
if not blocked or blocked < a['until'] then redis.call('ZADD', P .. 'blocked', a['until'], a.model) end
redis.call('HDEL', P .. 'probe', a.model) -- the probe (if it was one) failed: probing starts over
-- Probes go out about as often as the model's capacity comes back (its
-- rate's interval, else the wait the limiter gave), within [probe_min,
-- probe_window].
local every = a.every or (a['until'] - a.now)
hset(P .. 'pw', a.model, math.min(math.max(every, a.probe_min), a.probe_window))
local q = P .. 'q:' .. a.lane .. ':' .. a.tenant .. ':' .. a.model
local tmk = P .. 'tm:' .. a.lane .. ':' .. a.tenant
if redis.call('LPUSH', q, a.at .. '|' .. a.id) == 1 then
  redis.call('SADD', P .. 'bw:' .. a.model, a.lane .. '\n' .. a.tenant)
elseif redis.call('ZSCORE', tmk, a.model) then
  redis.call('ZADD', tmk, a.at, a.model)
end
hset(P .. 'w', a.tenant, a.weight)
count(P, a, 1)
keepTouched(a.keep)
return 1
`))

// schedArgs are scheduleJob's and giveBackJob's argument.
type schedArgs struct {
	Prefix  string  `json:"prefix"`
	ID      string  `json:"id"`
	Lane    string  `json:"lane"`
	Tenant  string  `json:"tenant"`
	Session string  `json:"session"`
	Model   string  `json:"model"`
	At      int64   `json:"at"`  // ms: when the job was submitted (its place among the tenant's models)
	Now     int64   `json:"now"` // ms
	Weight  float64 `json:"weight"`
	Until   int64   `json:"until,omitempty"` // ms, giveBackJob
	// giveBackJob: the bounds of the model's probe window (ms).
	ProbeMin    int64  `json:"probe_min,omitempty"`
	ProbeWindow int64  `json:"probe_window,omitempty"`
	Every       int64  `json:"every,omitempty"` // ms: how often the model's quota lets a call through, if known
	Publish     string `json:"publish"`
	Keep        int64  `json:"keep"` // s: how long the bookkeeping outlives its last write (Store.keep)
}

// dispatchJobs hands out up to a.n jobs: it ends the blocks that are over,
// then, per job, picks a lane (smooth weighted round robin among lanes with a
// runnable job), the lane's tenant with the lowest pass, and that tenant's
// oldest runnable model; a model met blocked is set aside for the tenant.
// The jobs a tenant gets in a row from one model are taken as one run (one
// LRANGE, one update of the lane): a round's cost grows with the runs in it,
// not with its jobs. Returns {{id, lane, tenant, model, session, paced}…,
// jobs left waiting, next block end ms or -1}.
// KEYS: jobs. ARGV: dispatchArgs as JSON.
var dispatchJobs = redis.NewScript(lua(schedLua, `
local a = cjson.decode(ARGV[1])
local P, now = a.prefix, a.now
for _, m in ipairs(redis.call('ZRANGEBYSCORE', P .. 'blocked', '-inf', now)) do
  redis.call('ZREM', P .. 'blocked', m)
  for _, lt in ipairs(redis.call('SMEMBERS', P .. 'bw:' .. m)) do
    local lane, tenant = lt:match('^([^\n]*)\n(.*)$')
    local head = redis.call('LINDEX', P .. 'q:' .. lane .. ':' .. tenant .. ':' .. m, 0)
    if head then
      redis.call('ZADD', P .. 'tm:' .. lane .. ':' .. tenant, headAt(head), m)
      activate(P, lane, tenant)
    end
  end
  redis.call('DEL', P .. 'bw:' .. m)
  -- A block ends in probing: one job a window until probeWindows of them
  -- pass without a job given back; then the model is open.
  local probes = tonumber(redis.call('HGET', P .. 'probe', m))
  if not probes then
    hset(P .. 'probe', m, 0)
  elseif probes + 1 >= a.probe_windows then
    redis.call('HDEL', P .. 'probe', m)
  else
    hset(P .. 'probe', m, probes + 1)
  end
end
-- What a round reads more than once is read once.
local weights, blockedUntil, probing = {}, {}, {}
local function weight(tenant)
  if not weights[tenant] then weights[tenant] = tonumber(redis.call('HGET', P .. 'w', tenant)) or 1 end
  return weights[tenant]
end
local function blocked(m)
  if blockedUntil[m] == nil then blockedUntil[m] = tonumber(redis.call('ZSCORE', P .. 'blocked', m)) or false end
  return blockedUntil[m] and blockedUntil[m] > now
end
local function probed(m)
  if probing[m] == nil then probing[m] = redis.call('HEXISTS', P .. 'probe', m) == 1 end
  return probing[m]
end
-- before says whether (score, member) comes first in a sorted set.
local function before(s1, m1, s2, m2) return s1 < s2 or (s1 == s2 and m1 < m2) end
local vt = {} -- lane -> pass of the last job handed out from it
-- run takes up to want jobs of a lane that would go one after another: the
-- tenant with the lowest pass, while its pass stays below the next tenant's,
-- from its oldest model, while its jobs are older than the next model's
-- head (one job of a model being probed). Returns the jobs (none when the
-- lane's tenants turn out to have only blocked models: they leave the
-- rotation) and whether the lane still has a tenant in rotation.
local function run(lane, want)
  local lk = P .. 'lane:' .. lane
  while true do
    local top = redis.call('ZRANGE', lk, 0, 1, 'WITHSCORES')
    if #top == 0 then return {}, false end
    local tenant, pass = top[1], tonumber(top[2])
    local tmk = P .. 'tm:' .. lane .. ':' .. tenant
    local model, nextModel, nextHead
    while true do
      local ms = redis.call('ZRANGE', tmk, 0, 1, 'WITHSCORES')
      local m = ms[1]
      if not m then break end
      if blocked(m) then
        redis.call('ZREM', tmk, m)
        redis.call('SADD', P .. 'bw:' .. m, lane .. '\n' .. tenant)
      else
        model, nextModel, nextHead = m, ms[3], tonumber(ms[4])
        break
      end
    end
    if not model then
      redis.call('ZREM', lk, tenant)
      hset(P .. 'pass:' .. lane, tenant, pass)
    else
      local w = weight(tenant)
      local k = want
      if probed(model) then
        k = 1
        blockedUntil[model] = now + (tonumber(redis.call('HGET', P .. 'pw', model)) or a.probe_window)
        redis.call('ZADD', P .. 'blocked', blockedUntil[model], model)
      end
      -- The tenant keeps the lowest pass for c jobs.
      local c = k
      if top[3] then
        local rival, rivalPass, np = top[3], tonumber(top[4]), pass + 1 / w
        c = 1
        while c < k and before(np, tenant, rivalPass, rival) do c, np = c + 1, np + 1 / w end
      end
      -- Its oldest model keeps its place for as many of them.
      local q = P .. 'q:' .. lane .. ':' .. tenant .. ':' .. model
      local entries = redis.call('LRANGE', q, 0, c - 1)
      local took = 1
      while took < #entries and (not nextModel or before(headAt(entries[took + 1]), model, nextHead, nextModel)) do took = took + 1 end
      for i = took + 1, #entries do entries[i] = nil end
      local last = pass -- the pass of the run's last job, added up as one job at a time would
      for _ = 2, took do last = last + 1 / w end
      local np = last + 1 / w
      vt[lane] = last
      redis.call('LTRIM', q, took, -1)
      local head = redis.call('LINDEX', q, 0)
      local runnable = true
      if head then
        redis.call('ZADD', tmk, headAt(head), model)
      else
        redis.call('ZREM', tmk, model)
        runnable = redis.call('ZCARD', tmk) > 0
      end
      local busy = true
      if runnable then
        redis.call('ZADD', lk, np, tenant)
      else
        redis.call('ZREM', lk, tenant)
        hset(P .. 'pass:' .. lane, tenant, np)
        busy = top[3] ~= nil
      end
      local ids = {}
      for i, e in ipairs(entries) do ids[i] = e:match('|(.*)$') end
      local places = redis.call('HMGET', KEYS[1], unpack(ids))
      redis.call('HDEL', KEYS[1], unpack(ids))
      redis.call('ZREM', P .. 'ml:' .. lane .. ':' .. model, unpack(ids))
      count(P, {tenant = tenant}, -took)
      local jobs = {}
      -- paced: the model has been at its quota (it has a probe window)
      local paced = tostring(redis.call('HEXISTS', P .. 'pw', model))
      for i, id in ipairs(ids) do
        local session = places[i] and cjson.decode(places[i]).session or ''
        jobs[i] = {id, lane, tenant, model, session, paced}
      end
      return jobs, busy
    end
  end
end
local cur = {}
local saved = redis.call('HGETALL', P .. 'swrr')
for i = 1, #saved, 2 do cur[saved[i]] = tonumber(saved[i + 1]) end
local busy = {} -- lanes with a tenant in rotation, read once, then kept up to date
for _, lane in ipairs(a.lanes) do busy[lane] = redis.call('EXISTS', P .. 'lane:' .. lane) == 1 end
-- step is one turn of the smooth weighted round robin over the busy lanes.
local function step(c, b)
  local best, total = nil, 0
  for i, lane in ipairs(a.lanes) do
    if b[lane] then
      c[lane] = (c[lane] or 0) + a.weights[i]
      total = total + a.weights[i]
      if not best or c[lane] > c[best] then best = lane end
    else
      c[lane] = 0
    end
  end
  return best, total
end
-- ahead counts the turns a lane gets in the next r, if the busy lanes stay
-- busy: how many of its jobs to take at once.
local function ahead(lane, r)
  local c, b, n = {}, {}, 0
  for k, v in pairs(cur) do c[k] = v end
  for k, v in pairs(busy) do b[k] = v end
  for _ = 1, r do
    local best, total = step(c, b)
    if best == lane then n = n + 1 end
    c[best] = c[best] - total
  end
  return n
end
local out = {}
local taken = {} -- lane -> jobs taken from it and not yet handed out, and the next one's index
while #out < a.n do
  local best, total = step(cur, busy)
  if not best then break end
  local t = taken[best]
  if not t or t.next > #t.jobs then
    -- the turn's own step is done: count the rest from cur as it was
    cur[best] = cur[best] - total
    local want = 1 + ahead(best, a.n - #out - 1)
    cur[best] = cur[best] + total
    t = {jobs = {}, next = 1, more = true}
    taken[best] = t
    while #t.jobs < want and t.more do
      local jobs, more = run(best, want - #t.jobs)
      for _, j in ipairs(jobs) do t.jobs[#t.jobs + 1] = j end
      t.more = more and #jobs > 0
    end
  end
  if t.next <= #t.jobs then
    out[#out + 1] = t.jobs[t.next]
    t.next = t.next + 1
    cur[best] = cur[best] - total
  end
  busy[best] = t.next <= #t.jobs or t.more
end
-- A lane that ran dry mid-round may leave another lane's run longer than its
-- turns: those jobs are out of the scheduler, so they go too.
for _, lane in ipairs(a.lanes) do
  local t = taken[lane]
  if t then for i = t.next, #t.jobs do out[#out + 1] = t.jobs[i] end end
end
for lane, pass in pairs(vt) do hset(P .. 'vt', lane, pass) end
local state = {}
for _, lane in ipairs(a.lanes) do
  state[#state + 1] = lane
  state[#state + 1] = cur[lane] or 0
end
redis.call('HSET', P .. 'swrr', unpack(state))
touched[P .. 'swrr'] = true
if #out > 0 then
  redis.call('INCRBY', P .. 'handed', #out)
  touched[P .. 'handed'] = true
end
keepTouched(a.keep)
local nxt = redis.call('ZRANGE', P .. 'blocked', 0, 0, 'WITHSCORES')
out[#out + 1] = redis.call('HLEN', KEYS[1])
out[#out + 1] = nxt[2] or '-1'
return out
`))

// dispatchArgs are dispatchJobs' argument.
type dispatchArgs struct {
	Prefix  string   `json:"prefix"`
	N       int      `json:"n"`
	Now     int64    `json:"now"` // ms
	Lanes   []string `json:"lanes"`
	Weights []int    `json:"weights"`
	Keep    int64    `json:"keep"`
	// A model whose block ended is probed: one job a ProbeWindow (ms), until
	// ProbeWindows windows pass without a job given back.
	ProbeWindow  int64 `json:"probe_window"`
	ProbeWindows int   `json:"probe_windows"`
}

// A model that was at its quota is probed before it is open again: its
// capacity may be a rate (one call a second at 60 rpm), and handing out all
// its jobs at once would give back all but one.
// The window is the interval of the model's rate (else the wait the limiter
// gave) when it was found at its quota, within [probeMin, probeWindow]: a
// model of 6,000 rpm is probed every 10 ms, one of 1,200 rpm every 50 ms,
// one of 60 rpm every 250 ms.
const (
	probeMin     = 10 * time.Millisecond
	probeWindow  = 250 * time.Millisecond
	probeWindows = 4
)

// Scheduled is a job waiting in the scheduler, or handed out by it.
type Scheduled struct {
	ID, Lane, Tenant, Session, Model string
	At                               time.Time // submitted
	Weight                           float64   // its tenant's weight
	// Paced (a job handed out): its model has been found at its quota
	// lately; its job goes through asynq's queue, whose pickup spaces the
	// starts, not straight to a worker's slot.
	Paced bool
}

func (s *Store) schedArgs(j Scheduled, until time.Time, every time.Duration) string {
	return argsJSON(s.schedArgsOf(j, until, every))
}

func (s *Store) schedArgsOf(j Scheduled, until time.Time, every time.Duration) *schedArgs {
	a := &schedArgs{Prefix: rkeys.SchedPrefix(), ID: j.ID, Lane: j.Lane, Tenant: j.Tenant, Session: j.Session, Model: j.Model,
		At: j.At.UnixMilli(), Now: s.opt.Clock().UnixMilli(), Weight: max(j.Weight, 0.001), Publish: s.publish, Keep: s.keep()}
	if !until.IsZero() {
		a.Until = until.UnixMilli()
		a.ProbeMin, a.ProbeWindow = probeMin.Milliseconds(), probeWindow.Milliseconds()
		a.Every = max(every.Milliseconds(), 0)
	}
	return a
}

// Schedule adds a job whose turn has come to the scheduler (nothing when it
// is there already) and nudges the dispatchers.
func (s *Store) Schedule(ctx context.Context, j Scheduled) error {
	if err := scheduleJob.Run(ctx, s.rdb, []string{rkeys.SchedJobs()}, s.schedArgs(j, time.Time{}, 0)).Err(); err != nil {
		return unavailable("schedule job", err)
	}
	return nil
}

// GiveBack puts a job that found its model at quota back at the front of its
// queue, and holds the model's jobs back until `until`; then it probes the
// model about every `every` (how often its quota lets a call through; zero:
// not known).
func (s *Store) GiveBack(ctx context.Context, j Scheduled, until time.Time, every time.Duration) error {
	if err := giveBackJob.Run(ctx, s.rdb, []string{rkeys.SchedJobs()}, s.schedArgs(j, until, every)).Err(); err != nil {
		return unavailable("give back job", err)
	}
	return nil
}

// Lane is a priority lane and its weight among lanes that have work.
type Lane struct {
	Name   string
	Weight int
}

// Dispatch hands out up to n jobs, fairly, and says how many jobs are left
// waiting (runnable or held back) and when the earliest block of a model
// ends (zero when none is blocked).
func (s *Store) Dispatch(ctx context.Context, n int, lanes []Lane) ([]Scheduled, int, time.Time, error) {
	a := dispatchArgs{Prefix: rkeys.SchedPrefix(), N: n, Now: s.opt.Clock().UnixMilli(), Keep: s.keep(),
		ProbeWindow: probeWindow.Milliseconds(), ProbeWindows: probeWindows}
	for _, l := range lanes {
		a.Lanes, a.Weights = append(a.Lanes, l.Name), append(a.Weights, l.Weight)
	}
	res, err := dispatchJobs.Run(ctx, s.rdb, []string{rkeys.SchedJobs()}, argsJSON(a)).Slice()
	if err != nil {
		return nil, 0, time.Time{}, unavailable("dispatch", err)
	}
	if len(res) < 2 {
		return nil, 0, time.Time{}, fmt.Errorf("dispatch: short reply %v", res)
	}
	left, _ := res[len(res)-2].(int64)
	var out []Scheduled
	for _, v := range res[:len(res)-2] {
		f, ok := v.([]any)
		if !ok || len(f) != 6 {
			return out, 0, time.Time{}, fmt.Errorf("dispatch: unexpected entry %v", v)
		}
		str := func(i int) string { x, _ := f[i].(string); return x }
		out = append(out, Scheduled{ID: str(0), Lane: str(1), Tenant: str(2), Model: str(3), Session: str(4), Paced: str(5) == "1"})
	}
	var next time.Time
	if ms, err := strconv.ParseFloat(fmt.Sprint(res[len(res)-1]), 64); err == nil && ms >= 0 {
		next = time.UnixMilli(int64(ms))
	}
	return out, int(left), next, nil
}

// ListenNudges subscribes to the scheduler's nudges (sharded on a cluster).
func (s *Store) ListenNudges(ctx context.Context) *redis.PubSub {
	if c, ok := s.rdb.(*redis.ClusterClient); ok {
		return c.SSubscribe(ctx, rkeys.SchedNudge())
	}
	return s.rdb.Subscribe(ctx, rkeys.SchedNudge())
}
