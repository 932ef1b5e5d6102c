package store

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// An Idempotency-Key makes the job id (tasks.IdempotentJobID), so a repeated
// submit finds the record it made; the key is also bound to that id, so the
// same key with another session (another id) is refused (ErrKeyReused).

// bindKey binds an Idempotency-Key to a job id unless it is bound already,
// and returns the id it is bound to. KEYS: binding. ARGV[1]: bindArgs JSON.
var bindKey = redis.NewScript(`
local a = cjson.decode(ARGV[1])
local owner = redis.call('GET', KEYS[1])
if owner then return owner end
redis.call('SET', KEYS[1], a.id, 'EX', a.ttl)
return a.id
`)

// unbindKey undoes bindKey for a job that was not made. KEYS: binding.
// ARGV[1]: bindArgs JSON (id).
var unbindKey = redis.NewScript(`
local a = cjson.decode(ARGV[1])
if redis.call('GET', KEYS[1]) == a.id then redis.call('DEL', KEYS[1]) end
return 1
`)

// bindArgs are bindKey's and unbindKey's arguments.
type bindArgs struct {
	ID  string `json:"id"`
	TTL int64  `json:"ttl,omitempty"` // s, bindKey
}

// PurgeLines removes the jobs of a tenant's batch lines whose answers their
// batches keep (job id -> the line's Idempotency-Key hash): records, event
// logs, listing entries and key bindings, in one pipeline. A line's key is
// bound to its job alone, so it goes without a check.
func (s *Store) PurgeLines(ctx context.Context, tenant string, lines map[string]string) error {
	if len(lines) == 0 {
		return nil
	}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for id, keyHash := range lines {
			p.Del(ctx, rkeys.Job(id), rkeys.Events(id)) // one slot: the job's bucket
			p.ZRem(ctx, rkeys.Listing(rkeys.Bucket(id), tenant), id)
			p.Del(ctx, rkeys.Idempotency(tenant, keyHash))
		}
		return nil
	})
	if err != nil {
		return unavailable("purge batch lines", err)
	}
	return nil
}

// unbind releases a job's Idempotency-Key binding when the job was not made.
// Best effort: a binding left behind expires with twice the retention.
func (s *Store) unbind(ctx context.Context, j NewJob) {
	if j.KeyHash != "" {
		_ = unbindKey.Run(context.WithoutCancel(ctx), s.rdb, []string{rkeys.Idempotency(j.Tenant, j.KeyHash)}, argsJSON(bindArgs{ID: j.ID})).Err()
	}
}
