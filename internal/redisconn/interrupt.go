package redisconn

import (
	"context"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Conns are the open connections of a client, so that their reads and
// writes under way can be cut short. go-redis bounds a command's read by its
// read timeout and the context's deadline, never by the context's
// cancellation: a request cancelled while Redis hangs would otherwise wait
// out the read timeout.
type Conns struct {
	mu  sync.Mutex
	set map[*trackedConn]struct{}
}

// Track follows the connections rdb dials from now on: call it before the
// client's first command, or earlier connections are not followed.
func Track(rdb redis.UniversalClient) *Conns {
	c := &Conns{set: map[*trackedConn]struct{}{}}
	switch r := rdb.(type) {
	case *redis.ClusterClient:
		// A cluster client dials through its nodes' clients, made on demand.
		r.OnNewNode(func(node *redis.Client) { node.AddHook(c) })
	default:
		rdb.AddHook(c)
	}
	return c
}

// Interrupt ends the reads and writes under way on every connection: each
// fails as a timeout, and go-redis drops the connection. A command whose
// context is cancelled then returns the context's error; any other is
// retried as after a read timeout.
func (c *Conns) Interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for tc := range c.set {
		_ = tc.SetDeadline(now)
	}
}

// DialHook implements redis.Hook.
func (c *Conns) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: conn, owner: c}
		c.mu.Lock()
		c.set[tc] = struct{}{}
		c.mu.Unlock()
		if _, ok := conn.(syscall.Conn); ok {
			return rawTrackedConn{tc}, nil
		}
		return tc, nil
	}
}

// ProcessHook implements redis.Hook.
func (c *Conns) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

// ProcessPipelineHook implements redis.Hook.
func (c *Conns) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

type trackedConn struct {
	net.Conn
	owner *Conns
}

func (tc *trackedConn) Close() error {
	tc.owner.mu.Lock()
	delete(tc.owner.set, tc)
	tc.owner.mu.Unlock()
	return tc.Conn.Close()
}

// NetConn is the connection dialled, for go-redis's checks of what a
// connection holds.
func (tc *trackedConn) NetConn() net.Conn { return tc.Conn }

// rawTrackedConn is a tracked plain socket: go-redis's pool checks an idle
// one through its file descriptor before it hands it out (a TLS connection is
// not checked so, and must not look as if it could be).
type rawTrackedConn struct{ *trackedConn }

func (rc rawTrackedConn) SyscallConn() (syscall.RawConn, error) {
	return rc.Conn.(syscall.Conn).SyscallConn()
}
