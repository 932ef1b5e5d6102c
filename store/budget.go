package store

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Budgets are reserved, not just checked: a submit reserves its estimated
// cost against its tenant's period (rkeys.Budget) in one script, so that a
// burst of submits cannot all pass a check that none of them has counted
// against yet. The record names the period it reserved in (`budget`). The
// script that ends the job writes what the job cost (`budget_spend`) and puts
// it in its bucket's settle index (rkeys.BudgetSettle) in the same step; the
// process that ended it then settles the reservation against that cost and
// takes it out, and a sweep settles what a process dying in between left.
// The budget and the job are in different slots on a cluster, so the two
// steps cannot be one; the reservation's field makes the second apply once.

// reserveBudget admits a job while its tenant's spend and reservations in the
// period are under the limit, and reserves its estimate: the last job
// admitted may pass the limit by its own cost, no further job is. Returns 1
// (reserved), 2 (the job had reserved already: a request sent again), 0
// (refused: the budget is spent or reserved).
// KEYS: budget. ARGV[1]: reserveArgs JSON.
var reserveBudget = redis.NewScript(`
local a = cjson.decode(ARGV[1])
local field, estimate, limit = 'r:' .. a.id, a.estimate, a.limit
if redis.call('HEXISTS', KEYS[1], field) == 1 then return 2 end
local v = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
if (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0) >= limit then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', estimate)
redis.call('HSET', KEYS[1], field, estimate)
redis.call('EXPIRE', KEYS[1], a.ttl)
return 1
`)

// reserveArgs are reserveBudget's arguments.
type reserveArgs struct {
	ID       string `json:"id"`
	Estimate int64  `json:"estimate"`
	Limit    int64  `json:"limit"`
	TTL      int64  `json:"ttl"` // s
}

// settleBudget replaces a job's reservation with what the job cost, once: a
// reservation already settled (or never made) changes nothing. A job whose
// end recorded no cost counts its estimate.
// KEYS: budget. ARGV[1]: settleArgs JSON. Returns 1 when it settled.
var settleBudget = redis.NewScript(`
local a = cjson.decode(ARGV[1])
local field = 'r:' .. a.id
local estimate = redis.call('HGET', KEYS[1], field)
if not estimate then return 0 end
local cost = a.cost or tonumber(estimate)
redis.call('HDEL', KEYS[1], field)
redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(estimate))
redis.call('HINCRBY', KEYS[1], 'spent', cost)
redis.call('EXPIRE', KEYS[1], a.ttl)
return 1
`)

// settleArgs are settleBudget's arguments.
type settleArgs struct {
	ID   string `json:"id"`
	Cost *int64 `json:"cost,omitempty"` // nil: unknown (the estimate counts)
	TTL  int64  `json:"ttl"`            // s
}

// Reservation outcomes.
const (
	Refused    = 0
	Reserved   = 1
	ReservedBy = 2 // the job had reserved before (a request sent again)
)

// Reserve reserves a job's estimated cost against its tenant's budget in a
// period whose counts are kept for ttl (Refused, Reserved or ReservedBy).
func (s *Store) Reserve(ctx context.Context, tenant, period, id string, estimate, limit int64, ttl time.Duration) (int, error) {
	n, err := reserveBudget.Run(ctx, s.rdb, []string{rkeys.Budget(tenant, period)},
		argsJSON(reserveArgs{ID: id, Estimate: estimate, Limit: limit, TTL: seconds(ttl)})).Int()
	if err != nil {
		return Refused, unavailable("reserve budget", err)
	}
	return n, nil
}

// Unreserve gives back a reservation whose job was never written.
func (s *Store) Unreserve(ctx context.Context, tenant, period, id string, ttl time.Duration) error {
	var none int64
	if err := settleBudget.Run(ctx, s.rdb, []string{rkeys.Budget(tenant, period)}, argsJSON(settleArgs{ID: id, Cost: &none, TTL: seconds(ttl)})).Err(); err != nil {
		return unavailable("give back budget", err)
	}
	return nil
}

// Settle settles an ended job's reservation against the cost its end
// recorded, and takes the job out of its bucket's settle index. ttl is how
// long the period's counts are kept. Settling twice changes nothing.
func (s *Store) Settle(ctx context.Context, id string, ttl func(period string) time.Duration) error {
	v, err := s.rdb.HMGet(ctx, rkeys.Job(id), "tenant", "budget", "budget_spend").Result()
	if err != nil {
		return unavailable("read job", err)
	}
	tenant, _ := v[0].(string)
	period, _ := v[1].(string)
	cost, _ := v[2].(string)
	if tenant != "" && period != "" {
		a := settleArgs{ID: id, TTL: seconds(ttl(period))}
		if c, err := strconv.ParseInt(cost, 10, 64); err == nil {
			a.Cost = &c
		}
		if err := settleBudget.Run(ctx, s.rdb, []string{rkeys.Budget(tenant, period)}, argsJSON(a)).Err(); err != nil {
			return unavailable("settle budget", err)
		}
	}
	// A record gone before its reservation settled leaves the reservation
	// to the period's end (its key's TTL): what it cost is no longer known.
	if err := s.rdb.ZRem(ctx, rkeys.BudgetSettle(rkeys.Bucket(id)), id).Err(); err != nil {
		return unavailable("settle budget", err)
	}
	return nil
}

// ClaimSettlements takes up to limit jobs of each bucket's settle index whose
// time has come (their ender did not settle them); their time moves claimFor
// ahead, so that one sweeper handles each.
func (s *Store) ClaimSettlements(ctx context.Context, limit int, claimFor time.Duration) ([]string, error) {
	ids, err := s.claimEach(ctx, claimDue, rkeys.BudgetSettle, claimArgs{Limit: limit, Claim: claimFor.Milliseconds()})
	if err != nil {
		return ids, unavailable("claim settlements", err)
	}
	return ids, nil
}

// BudgetCounts are a tenant's spend and reservations in a budget period
// (tokens or millionths of a dollar).
type BudgetCounts struct {
	Spent, Reserved int64
}

// Budget reads a tenant's counts in a budget period.
func (s *Store) Budget(ctx context.Context, tenant, period string) (BudgetCounts, error) {
	v, err := s.rdb.HMGet(ctx, rkeys.Budget(tenant, period), "spent", "reserved").Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return BudgetCounts{}, unavailable("read budget", err)
	}
	var c BudgetCounts
	if len(v) == 2 {
		c.Spent, _ = strconv.ParseInt(str(v[0]), 10, 64)
		c.Reserved, _ = strconv.ParseInt(str(v[1]), 10, 64)
	}
	return c, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
