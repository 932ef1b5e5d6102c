package store

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// A job with webhooks enters its bucket's outbox in the script that ends it
// (finish), scored with when a sweep may take it up; the process that ended
// it enqueues the deliveries at once and takes it out (webhooks.Outbox).

// ClaimWebhooks takes up to limit jobs of each bucket's outbox whose time has
// come; their time moves claimFor ahead, so that one sweeper handles each.
func (s *Store) ClaimWebhooks(ctx context.Context, limit int, claimFor time.Duration) ([]string, error) {
	ids, err := s.claimEach(ctx, claimDue, rkeys.WebhookOutbox, claimArgs{Limit: limit, Claim: claimFor.Milliseconds()})
	if err != nil {
		return ids, unavailable("claim webhooks", err)
	}
	return ids, nil
}

// WebhooksEnqueued takes a job out of the outbox: its deliveries are queued.
func (s *Store) WebhooksEnqueued(ctx context.Context, id string) error {
	if err := s.rdb.ZRem(ctx, rkeys.WebhookOutbox(rkeys.Bucket(id)), id).Err(); err != nil {
		return unavailable("webhook outbox", err)
	}
	return nil
}

// DeliveryEntry is one receiver's entry in a job's deliveries.
type DeliveryEntry struct {
	Target  string // the receiver's key in the record's deliveries
	EventID string // the event it delivers: another event's entry (a re-run's) is replaced whatever its rank
	Rank    int    // the state's place in its order: an entry never moves to a lower one of the same event
	JSON    []byte // what the record shows
}

// deliveryArgs are recordDelivery's arguments.
type deliveryArgs struct {
	Target string `json:"target"`
	Entry  string `json:"entry"` // DeliveryEntry.JSON
	Event  string `json:"event"`
	Rank   int    `json:"rank"`
}

// recordDelivery sets one target's entry of a job's deliveries, while the
// record lives (a delivery that outlives it writes nothing), unless the entry
// of the same event is further on: the enqueue's pending can land after the
// delivery it enqueued ended. Each target's event and rank are kept beside
// the entries (delivery_ranks), so the entries stay what the caller wrote.
// Returns 1 when written, 0 when not.
// KEYS: job. ARGV[1]: deliveryArgs JSON.
var recordDelivery = redis.NewScript(`
local a = cjson.decode(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local v = redis.call('HMGET', KEYS[1], 'deliveries', 'delivery_ranks')
local m = v[1] and cjson.decode(v[1]) or {}
local ranks = v[2] and cjson.decode(v[2]) or {}
local target, event, rank = a.target, a.event, a.rank
local old = ranks[target]
if old and old.event == event and old.rank > rank then return 0 end
m[target] = cjson.decode(a.entry)
ranks[target] = {event = event, rank = rank}
redis.call('HSET', KEYS[1], 'deliveries', cjson.encode(m), 'delivery_ranks', cjson.encode(ranks))
return 1
`)

// RecordDelivery notes how a job's delivery to a target went, moving its
// entry only forward (see DeliveryEntry).
func (s *Store) RecordDelivery(ctx context.Context, id string, e DeliveryEntry) error {
	if err := recordDelivery.Run(ctx, s.rdb, []string{rkeys.Job(id)},
		argsJSON(deliveryArgs{Target: e.Target, Entry: string(e.JSON), Event: e.EventID, Rank: e.Rank})).Err(); err != nil {
		return unavailable("record webhook delivery", err)
	}
	return nil
}
