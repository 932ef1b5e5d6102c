package stream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Wakeups is a worker's side of Store.Wake: one subscription per process,
// to its own channel, on which the API names a running job that has just
// gained a live follower; the job's emitter then sends what it held back.
type Wakeups struct {
	mu       sync.Mutex
	emitters map[string]*Emitter // job id -> the emitter of its attempt here
}

// NewRunnerName names a process for store.Options.Runner: unique, so that
// no two processes share a channel.
func NewRunnerName() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}

// ListenWakeups subscribes to runner's channel until ctx ends. Without the
// subscription (Redis down at first) emitters still work: a follower that
// arrives then waits for the unfollowed window instead.
func ListenWakeups(ctx context.Context, rdb redis.UniversalClient, runner string, log zerolog.Logger) *Wakeups {
	w := &Wakeups{emitters: map[string]*Emitter{}}
	ch := rkeys.RunnerChannel(runner)
	var ps *redis.PubSub
	if c, ok := rdb.(*redis.ClusterClient); ok {
		ps = c.SSubscribe(ctx, ch) // on the channel's shard, where Wake publishes
	} else {
		ps = rdb.Subscribe(ctx, ch)
	}
	go func() {
		defer ps.Close()
		// go-redis reconnects and subscribes again by itself.
		msgs := ps.Channel()
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-msgs:
				if !ok {
					log.Warn().Msg("the follower wake-up subscription ended")
					return
				}
				w.mu.Lock()
				e := w.emitters[m.Payload]
				w.mu.Unlock()
				if e != nil {
					e.Followed()
				}
			}
		}
	}()
	return w
}

// Add registers the emitter of a job's attempt here until the returned
// function is called. A nil Wakeups registers nothing.
func (w *Wakeups) Add(id string, e *Emitter) (remove func()) {
	if w == nil {
		return func() {}
	}
	w.mu.Lock()
	w.emitters[id] = e
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		if w.emitters[id] == e {
			delete(w.emitters, id)
		}
		w.mu.Unlock()
	}
}
