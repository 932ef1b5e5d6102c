package stream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Wakeups is a worker's side of Store.Wake and Store.Interrupt: one
// subscription per process, to its own channel, on which the API names a
// running job that has just gained a live follower (the job's emitter then
// sends what it held back), or a job canceled while it runs here without an
// asynq task (its run is canceled; asynq cancels its own tasks).
type Wakeups struct {
	mu       sync.Mutex
	emitters map[string]*Emitter           // job id -> the emitter of its attempt here
	cancels  map[string]context.CancelFunc // job id -> the cancel of its run here
	// early keeps a wake that came before its job's emitter was added (the
	// record names this runner from the attempt's start, a moment before):
	// Add delivers it. Job id -> when it came.
	early map[string]time.Time
}

// earlyWakeFor is how long a wake waits for its job's emitter, and
// maxEarlyWakes bounds how many wait (wakes for jobs that never come here).
const (
	earlyWakeFor  = 5 * time.Second
	maxEarlyWakes = 4096
)

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
	w := &Wakeups{emitters: map[string]*Emitter{}, cancels: map[string]context.CancelFunc{}, early: map[string]time.Time{}}
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
				if id, ok := strings.CutPrefix(m.Payload, rkeys.InterruptPrefix); ok {
					w.interrupt(id)
				} else {
					w.wake(m.Payload)
				}
			}
		}
	}()
	return w
}

// wake switches a job's emitter to the followed window, or keeps the wake
// for an emitter about to be added. The emitter's flush (Redis I/O) runs off
// the subscription's goroutine, so one slow append delays no other wake.
func (w *Wakeups) wake(id string) {
	now := time.Now()
	w.mu.Lock()
	e := w.emitters[id]
	if e == nil {
		if len(w.early) >= maxEarlyWakes {
			for k, at := range w.early {
				if now.Sub(at) > earlyWakeFor {
					delete(w.early, k)
				}
			}
		}
		if len(w.early) < maxEarlyWakes {
			w.early[id] = now
		}
	}
	w.mu.Unlock()
	if e != nil {
		go e.Followed()
	}
}

// Add registers the emitter of a job's attempt here until the returned
// function is called. A nil Wakeups registers nothing.
func (w *Wakeups) Add(id string, e *Emitter) (remove func()) {
	if w == nil {
		return func() {}
	}
	w.mu.Lock()
	w.emitters[id] = e
	at, woken := w.early[id]
	delete(w.early, id)
	w.mu.Unlock()
	if woken && time.Since(at) <= earlyWakeFor {
		e.Followed()
	}
	return func() {
		w.mu.Lock()
		if w.emitters[id] == e {
			delete(w.emitters, id)
		}
		w.mu.Unlock()
	}
}

// interrupt cancels the run of a job here (a cancel of the job).
func (w *Wakeups) interrupt(id string) {
	w.mu.Lock()
	cancel := w.cancels[id]
	w.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// AddCancel registers the cancel of a job's run here until the returned
// function is called. A nil Wakeups registers nothing.
func (w *Wakeups) AddCancel(id string, cancel context.CancelFunc) (remove func()) {
	if w == nil {
		return func() {}
	}
	w.mu.Lock()
	w.cancels[id] = cancel
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.cancels, id)
		w.mu.Unlock()
	}
}
