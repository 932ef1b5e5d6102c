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
	ids, err := s.claimEach(ctx, claimDue, rkeys.WebhookOutbox, limit, claimFor.Milliseconds())
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

// recordDelivery sets one target's entry of a job's deliveries, while the
// record lives (a delivery that outlives it writes nothing).
// KEYS: job. ARGV: target, entry (JSON).
var recordDelivery = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local d = redis.call('HGET', KEYS[1], 'deliveries')
local m = d and cjson.decode(d) or {}
m[ARGV[1]] = cjson.decode(ARGV[2])
redis.call('HSET', KEYS[1], 'deliveries', cjson.encode(m))
return 1
`)

// RecordDelivery notes how a job's delivery to target went (entry is JSON).
func (s *Store) RecordDelivery(ctx context.Context, id, target string, entry []byte) error {
	if err := recordDelivery.Run(ctx, s.rdb, []string{rkeys.Job(id)}, target, string(entry)).Err(); err != nil {
		return unavailable("record webhook delivery", err)
	}
	return nil
}
