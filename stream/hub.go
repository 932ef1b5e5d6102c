package stream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/store"
)

// Hub multiplexes every live stream of an API process over few Redis pub/sub
// connections: one, or on Redis Cluster one per shard (sharded pub/sub, where
// a job's channel lives on its shard). A job's channel is subscribed while at
// least one client follows it, and its messages are fanned out to those
// clients.
type Hub struct {
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // nil: not a cluster
	log     zerolog.Logger

	closing atomic.Bool
	wg      sync.WaitGroup

	mu    sync.Mutex
	chans map[string]*channel // job id -> followers
	conns map[string]*conn    // shard's address ("" when not a cluster) -> its connection

	// wake is told of a job's first token follower here once it is
	// subscribed (jobs.Manager.Wake): its worker stops holding deltas back.
	wake func(ctx context.Context, id string) error
}

// conn is one pub/sub connection and the (un)subscribe confirmations it
// awaits, per channel in order.
type conn struct {
	ps    *redis.PubSub
	shard string // the master's address it was opened to ("" when not a cluster)
	queue map[string][]*channel
}

type channel struct {
	conn      *conn
	ready     chan struct{} // closed once Redis confirmed the subscription
	confirmed bool
	members   map[*Subscription]struct{}
	woken     bool // the job's worker was told of a token follower here
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

// NewHub returns a hub on rdb; connections open with the first subscription
// of their shard.
func NewHub(rdb redis.UniversalClient, log zerolog.Logger) *Hub {
	h := &Hub{
		rdb:   rdb,
		log:   log.With().Str("component", "stream-hub").Logger(),
		chans: map[string]*channel{},
		conns: map[string]*conn{},
	}
	h.cluster, _ = rdb.(*redis.ClusterClient)
	return h
}

// WakeWith has wake told of each job's first token follower on this
// process (Subscribe, not SubscribeFinal), once the subscription stands
// (jobs.Manager.Wake).
func (h *Hub) WakeWith(wake func(ctx context.Context, id string) error) { h.wake = wake }

// syncLog asks the worker of job id to write its log up to the events it
// sent live (a follower that subscribed after some of them went out finds
// a gap the log cannot fill yet): the wake that a first follower sends.
func (h *Hub) syncLog(ctx context.Context, id string) {
	if h.wake == nil {
		return
	}
	if err := h.wake(ctx, id); err != nil {
		h.log.Warn().Err(err).Str("job_id", id).Msg("could not ask the worker to write the log; the follower catches up at its next write")
	}
}

// Close ends the pub/sub connections.
func (h *Hub) Close() error {
	h.closing.Store(true)
	h.mu.Lock()
	var errs []error
	for _, c := range h.conns {
		errs = append(errs, c.ps.Close())
	}
	h.mu.Unlock()
	h.wg.Wait()
	return errors.Join(errs...)
}

// connFor returns the connection that carries a channel, opening it when
// needed; h.mu is held.
func (h *Hub) connFor(ctx context.Context, name string) (*conn, error) {
	shard := ""
	if h.cluster != nil {
		master, err := h.cluster.MasterForKey(ctx, name)
		if err != nil {
			return nil, err
		}
		shard = master.Options().Addr
	}
	if c := h.conns[shard]; c != nil {
		return c, nil
	}
	c := &conn{shard: shard, queue: map[string][]*channel{}}
	if h.cluster != nil {
		c.ps = h.cluster.SSubscribe(context.Background()) // connects to the first channel's shard
	} else {
		c.ps = h.rdb.Subscribe(context.Background())
	}
	h.conns[shard] = c
	h.wg.Add(1)
	go h.receive(c)
	return c, nil
}

func (h *Hub) subscribe(ctx context.Context, c *conn, name string) error {
	if h.cluster != nil {
		return c.ps.SSubscribe(ctx, name)
	}
	return c.ps.Subscribe(ctx, name)
}

func (h *Hub) unsubscribe(ctx context.Context, c *conn, name string) error {
	if h.cluster != nil {
		return c.ps.SUnsubscribe(ctx, name)
	}
	return c.ps.Unsubscribe(ctx, name)
}

// Subscribe follows a job's live events for a client that shows its tokens
// as they come. It returns once Redis has confirmed the subscription, so that
// a read of the log that follows misses nothing.
func (h *Hub) Subscribe(ctx context.Context, id string) (*Subscription, error) {
	return h.subscribeJob(ctx, id, true)
}

// SubscribeFinal is Subscribe for a client that waits for the job's end
// only (a request answered whole): the worker is not asked to stream the
// tokens at the followed pace for it.
func (h *Hub) SubscribeFinal(ctx context.Context, id string) (*Subscription, error) {
	return h.subscribeJob(ctx, id, false)
}

func (h *Hub) subscribeJob(ctx context.Context, id string, tokens bool) (*Subscription, error) {
	s := &Subscription{hub: h, id: id, Events: make(chan store.Event, subscriptionBuffer), Lagged: make(chan struct{}, 1)}
	h.mu.Lock()
	ch := h.chans[id]
	if ch == nil {
		ch = &channel{ready: make(chan struct{}), members: map[*Subscription]struct{}{}}
		if err := h.attach(ctx, id, ch); err != nil {
			h.mu.Unlock()
			return nil, fmt.Errorf("subscribe: %w: %w", store.ErrUnavailable, err)
		}
		h.chans[id] = ch
	}
	ch.members[s] = struct{}{}
	wake := tokens && !ch.woken && h.wake != nil
	if wake {
		ch.woken = true
	}
	h.mu.Unlock()

	t := time.NewTimer(confirmTimeout)
	defer t.Stop()
	select {
	case <-ch.ready:
		if wake {
			if err := h.wake(ctx, id); err != nil { // the worker sends at its unfollowed pace meanwhile
				h.log.Debug().Err(err).Str("job_id", id).Msg("could not tell the job's worker of its follower")
				h.mu.Lock()
				ch.woken = false // the next follower here tries again
				h.mu.Unlock()
			}
		}
		return s, nil
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	case <-t.C:
		s.Close()
		return nil, fmt.Errorf("subscribe: %w: no confirmation within %s", store.ErrUnavailable, confirmTimeout)
	}
}

// attach subscribes a job's channel on its shard's connection; h.mu is held,
// so that the order of commands on the wire is the order of the confirmation
// queue.
func (h *Hub) attach(ctx context.Context, id string, ch *channel) error {
	name := rkeys.LiveChannel(id)
	c, err := h.connFor(ctx, name)
	if err != nil {
		return err
	}
	if err := h.subscribe(ctx, c, name); err != nil {
		return err
	}
	ch.conn = c
	c.queue[name] = append(c.queue[name], ch)
	return nil
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
	if ch.conn == nil {
		return
	}
	name := rkeys.LiveChannel(s.id)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := h.unsubscribe(ctx, ch.conn, name); err != nil {
		h.log.Debug().Err(err).Msg("unsubscribe failed; the reconnect will drop the channel")
		return
	}
	ch.conn.queue[name] = append(ch.conn.queue[name], nil) // nil awaits an unsubscribe confirmation
}

func (h *Hub) receive(c *conn) {
	defer h.wg.Done()
	ctx := context.Background()
	broken := false
	for {
		msg, err := c.ps.ReceiveTimeout(ctx, receiveTimeout)
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
				_ = c.ps.Ping(ctx) // an idle connection: make sure it is alive
				continue
			}
			if slot, addr, ok := movedTo(err); ok {
				// The answer to unsubscribing a moved channel (moved), or
				// to a subscription sent to a node that does not serve it.
				h.mu.Lock()
				h.refused(c, slot, addr)
				h.mu.Unlock()
				continue
			}
			if !broken {
				h.log.Warn().Err(err).Msg("live event connection lost; followers catch up from the log")
				broken = true
			}
			h.resync(c)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			h.confirm(c, m)
		case *redis.Message:
			h.deliver(m)
		}
	}
}

func (h *Hub) confirm(c *conn, m *redis.Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	q := c.queue[m.Channel]
	if len(q) == 0 {
		if m.Kind == "sunsubscribe" {
			h.moved(c, m.Channel) // the server dropped it: its slot moved
		}
		return // else a resubscribe after a reconnect
	}
	head := q[0]
	if len(q) == 1 {
		delete(c.queue, m.Channel)
	} else {
		c.queue[m.Channel] = q[1:]
	}
	if head != nil && (m.Kind == "subscribe" || m.Kind == "ssubscribe") && !head.confirmed {
		head.confirmed = true
		close(head.ready)
	}
}

// moved handles a channel that the server dropped because its slot moved to
// another shard (resharding): its followers catch up from the log, and it is
// subscribed again on the new shard once the slot map names it. h.mu is held.
func (h *Hub) moved(c *conn, name string) {
	id, ok := rkeys.JobIDOfChannel(name)
	ch := h.chans[id]
	if !ok || ch == nil || ch.conn != c || h.cluster == nil {
		return
	}
	ch.conn = nil
	for s := range ch.members {
		s.lag()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// Else go-redis subscribes it again on this connection when it reconnects.
	// The server answers MOVED, not a confirmation (receive skips it).
	_ = h.unsubscribe(ctx, c, name)
	h.cluster.ReloadState(ctx)
	h.wg.Add(1)
	go h.reattach(id, ch, c.shard)
}

// movedTo reads a MOVED answer: the slot and the node that serves it.
func movedTo(err error) (slot int, addr string, ok bool) {
	f := strings.Fields(err.Error())
	if len(f) != 3 || f[0] != "MOVED" {
		return 0, "", false
	}
	slot, perr := strconv.Atoi(f[1])
	return slot, f[2], perr == nil
}

// refused handles a MOVED answer to subscriptions on c: their channels were
// sent to a node that does not serve their slot, because the slot map was
// read while the cluster changed (just formed, resharded, failed over). They
// are subscribed again where the slot map, read again, says. When the node
// named is the one c was opened for, c itself went to another node: it is
// closed and every channel on it follows again through new connections.
// h.mu is held.
func (h *Hub) refused(c *conn, slot int, addr string) {
	if h.cluster == nil || h.closing.Load() {
		return
	}
	var waiting []string
	for name, q := range c.queue {
		if rkeys.Slot(name) == slot && slices.ContainsFunc(q, func(ch *channel) bool { return ch != nil }) {
			waiting = append(waiting, name)
		}
	}
	if len(waiting) == 0 {
		return // the answer to unsubscribing a moved channel
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	h.cluster.ReloadState(ctx)
	old := c.shard
	if addr == c.shard {
		delete(h.conns, c.shard)
		_ = c.ps.Close()
		waiting, old = nil, ""
		for id, ch := range h.chans {
			if ch.conn == c {
				waiting = append(waiting, rkeys.LiveChannel(id))
			}
		}
	}
	for _, name := range waiting {
		delete(c.queue, name)
		id, _ := rkeys.JobIDOfChannel(name)
		if ch := h.chans[id]; ch != nil && ch.conn == c {
			ch.conn = nil
			h.wg.Add(1)
			go h.reattach(id, ch, old)
		}
	}
}

// reattach subscribes a moved channel on its new shard as soon as the slot map
// names another master than `old` (up to 10 s), then has its followers catch
// up from the log once more: events of the move's moments went to no one.
func (h *Hub) reattach(id string, ch *channel, old string) {
	defer h.wg.Done()
	name := rkeys.LiveChannel(id)
	for range 50 {
		time.Sleep(200 * time.Millisecond)
		if h.closing.Load() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		master, err := h.cluster.MasterForKey(ctx, name)
		if err != nil || master.Options().Addr == old {
			h.cluster.ReloadState(ctx)
			cancel()
			continue
		}
		h.mu.Lock()
		if h.chans[id] == ch && ch.conn == nil && !h.closing.Load() {
			err = h.attach(ctx, id, ch)
			for s := range ch.members {
				if ch.confirmed { // a follower that has not read the log yet needs no catch-up
					s.lag()
				}
			}
		}
		h.mu.Unlock()
		cancel()
		if err == nil {
			return
		}
	}
	h.log.Warn().Str("job_id", id).Msg("could not follow a moved channel; its followers read the log at each heartbeat")
}

func (h *Hub) deliver(m *redis.Message) {
	id, ok := rkeys.JobIDOfChannel(m.Channel)
	if !ok {
		return
	}
	ev, err := store.ParseMessage(m.Payload)
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
// itself, but messages in between are gone, so every follower of the
// connection's channels reads the log.
func (h *Hub) resync(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.queue = map[string][]*channel{}
	for _, ch := range h.chans {
		if ch.conn != c {
			continue
		}
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
