package llm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// breakerStore keeps gobreaker's shared state in Redis.
type breakerStore struct {
	rdb   redis.UniversalClient
	token string
}

func newBreakerStore(rdb redis.UniversalClient) *breakerStore {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return &breakerStore{rdb: rdb, token: hex.EncodeToString(b)}
}

var errLocked = errors.New("breaker state is locked by another process")

// Lock takes a short lease on the shared state. It spins briefly itself, so
// that gobreaker's own 500 ms retry sleep is rarely reached.
func (s *breakerStore) Lock(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	deadline := time.Now().Add(200 * time.Millisecond)
	for {
		ok, err := s.rdb.SetNX(ctx, rkeys.Breaker(name), s.token, 2*time.Second).Result()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errLocked
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// serialize runs f, a record into the shared breaker, holding the
// provider's update lock. gobreaker's distributed breaker reads the shared
// state before it takes its own lock and writes it back after: two processes
// recording a failure at once would both write the count they read plus one.
// Under this lock each reads what the one before it wrote. The lock is
// per call (its own token) and lapses after 2 s should its holder die.
func (s *breakerStore) serialize(provider string, f func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	key, token := rkeys.Breaker("update:"+provider), newToken()
	for {
		ok, err := s.rdb.SetNX(ctx, key, token, 2*time.Second).Result()
		if err != nil {
			return err
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return errLocked
		case <-time.After(time.Millisecond):
		}
	}
	defer func() { _ = deleteIfOwner.Run(context.WithoutCancel(ctx), s.rdb, []string{key}, token).Err() }()
	return f()
}

// deleteIfOwner deletes a lease (the shared state's lock, the half-open
// probe's claim) if the caller still holds it. KEYS: the lease. ARGV: the
// caller's token.
var deleteIfOwner = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// Unlock releases the lease if this process still holds it.
func (s *breakerStore) Unlock(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return deleteIfOwner.Run(ctx, s.rdb, []string{rkeys.Breaker(name)}, s.token).Err()
}

// GetData reads the shared state; none yet is (nil, nil).
func (s *breakerStore) GetData(name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b, err := s.rdb.Get(ctx, rkeys.Breaker(name)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return b, err
}

// SetData writes the shared state and announces the change to every
// process (Guarded.watch).
func (s *breakerStore) SetData(name string, data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.rdb.Set(ctx, rkeys.Breaker(name), data, 0).Err(); err != nil {
		return err
	}
	return s.rdb.Publish(ctx, rkeys.BreakerChanged(strings.TrimPrefix(name, sharedStateName(""))), "1").Err()
}
