package stream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/store"
)

// Hub multiplexes every live stream of an API process over one Redis pub/sub
// connection: a job's channel is subscribed while at least one client follows
// it, and its messages are fanned out to those clients.
type Hub struct {
	ps  *redis.PubSub
	log zerolog.Logger

	closing atomic.Bool

	mu    sync.Mutex
	chans map[string]*channel   // job id -> followers
	queue map[string][]*channel // per channel, the (un)subscribe confirmations awaited, in order
	done  chan struct{}
}

type channel struct {
	ready     chan struct{} // closed once Redis confirmed the subscription
	confirmed bool
	members   map[*Subscription]struct{}
}

// Subscription receives one job's live events.
type Subscription struct {
	hub *Hub
	id  string
	// Events delivers live events in publish order. When the buffer is full an
	// event is dropped and Lagged is signalled: read the log to catch up.
	Events chan store.Event
	Lagged chan struct{}
}

const (
	// A follower that falls further behind catches up from the log; a small
	// buffer keeps 10,000 idle streams cheap.
	subscriptionBuffer = 16
	confirmTimeout     = 5 * time.Second
	receiveTimeout     = 30 * time.Second
)

// NewHub opens the pub/sub connection and starts receiving.
func NewHub(rdb redis.UniversalClient, log zerolog.Logger) *Hub {
	h := &Hub{
		ps:    rdb.Subscribe(context.Background()),
		log:   log.With().Str("component", "stream-hub").Logger(),
		chans: map[string]*channel{},
		queue: map[string][]*channel{},
		done:  make(chan struct{}),
	}
	go h.receive()
	return h
}

// Close ends the pub/sub connection.
func (h *Hub) Close() error {
	h.closing.Store(true)
	err := h.ps.Close()
	<-h.done
	return err
}

// Subscribe follows a job's live events. It returns once Redis has confirmed
// the subscription, so that a read of the log that follows misses nothing.
func (h *Hub) Subscribe(ctx context.Context, id string) (*Subscription, error) {
	s := &Subscription{hub: h, id: id, Events: make(chan store.Event, subscriptionBuffer), Lagged: make(chan struct{}, 1)}
	h.mu.Lock()
	ch := h.chans[id]
	if ch == nil {
		ch = &channel{ready: make(chan struct{}), members: map[*Subscription]struct{}{}}
		h.chans[id] = ch
		// Written under the lock so that the order of commands on the wire is
		// the order of the confirmation queue.
		name := rkeys.LiveChannel(id)
		if err := h.ps.Subscribe(ctx, name); err != nil {
			delete(h.chans, id)
			h.mu.Unlock()
			return nil, fmt.Errorf("subscribe: %w: %w", store.ErrUnavailable, err)
		}
		h.queue[name] = append(h.queue[name], ch)
	}
	ch.members[s] = struct{}{}
	h.mu.Unlock()

	t := time.NewTimer(confirmTimeout)
	defer t.Stop()
	select {
	case <-ch.ready:
		return s, nil
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	case <-t.C:
		s.Close()
		return nil, fmt.Errorf("subscribe: %w: no confirmation within %s", store.ErrUnavailable, confirmTimeout)
	}
}

// Close stops following; the channel is unsubscribed when its last follower leaves.
func (s *Subscription) Close() {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := h.chans[s.id]
	if ch == nil {
		return
	}
	delete(ch.members, s)
	if len(ch.members) > 0 {
		return
	}
	delete(h.chans, s.id)
	name := rkeys.LiveChannel(s.id)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := h.ps.Unsubscribe(ctx, name); err != nil {
		h.log.Debug().Err(err).Msg("unsubscribe failed; the reconnect will drop the channel")
		return
	}
	h.queue[name] = append(h.queue[name], nil) // nil awaits an unsubscribe confirmation
}

func (h *Hub) receive() {
	defer close(h.done)
	ctx := context.Background()
	broken := false
	for {
		msg, err := h.ps.ReceiveTimeout(ctx, receiveTimeout)
		if err == nil && broken {
			broken = false
			h.log.Info().Msg("live event connection restored")
		}
		if err != nil {
			if errors.Is(err, redis.ErrClosed) || h.closing.Load() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				_ = h.ps.Ping(ctx) // an idle connection: make sure it is alive
				continue
			}
			if !broken {
				h.log.Warn().Err(err).Msg("live event connection lost; followers catch up from the log")
				broken = true
			}
			h.resync()
			time.Sleep(100 * time.Millisecond)
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			h.confirm(m)
		case *redis.Message:
			h.deliver(m)
		}
	}
}

func (h *Hub) confirm(m *redis.Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := h.queue[m.Channel]
	if len(q) == 0 {
		return // a resubscribe after a reconnect
	}
	head := q[0]
	if len(q) == 1 {
		delete(h.queue, m.Channel)
	} else {
		h.queue[m.Channel] = q[1:]
	}
	if head != nil && m.Kind == "subscribe" && !head.confirmed {
		head.confirmed = true
		close(head.ready)
	}
}

func (h *Hub) deliver(m *redis.Message) {
	id, ok := rkeys.JobIDOfChannel(m.Channel)
	if !ok {
		return
	}
	ev, err := store.ParseEvent(m.Payload)
	if err != nil {
		h.log.Warn().Err(err).Str("job_id", id).Msg("dropping a malformed live event")
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := h.chans[id]
	if ch == nil {
		return
	}
	for s := range ch.members {
		select {
		case s.Events <- ev:
		default:
			s.lag()
		}
	}
}

// resync handles a lost connection: go-redis reconnects and resubscribes by
// itself, but messages in between are gone, so every follower reads the log.
func (h *Hub) resync() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.queue = map[string][]*channel{}
	for _, ch := range h.chans {
		if !ch.confirmed {
			ch.confirmed = true
			close(ch.ready)
		}
		for s := range ch.members {
			s.lag()
		}
	}
}

func (s *Subscription) lag() {
	select {
	case s.Lagged <- struct{}{}:
	default:
	}
}
