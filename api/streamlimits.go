package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
)

// streamCap bounds a tenant's held connections across every API process:
// SSE streams, /v1 requests waiting for their answer (streamed or not) and
// ?wait= long polls. Each holds a lease in Redis, renewed at each heartbeat,
// so the connections of an API process that died stop counting after a few
// heartbeats.
type streamCap struct {
	rdb   redis.UniversalClient
	max   int
	lease time.Duration
}

// acquireStream takes a slot when the tenant has one free.
// KEYS: the tenant's stream leases. ARGV: now ms, cap, expiry ms, stream id, key ttl ms.
var acquireStream = redis.NewScript(`
local now, cap, expiry, id, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], expiry, id)
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
`)

// renewStream extends a stream's lease and the set's expiry together: a set
// that expired while its streams were open would forget them all.
// KEYS: the tenant's stream leases. ARGV: expiry ms, stream id, key ttl ms.
var renewStream = redis.NewScript(`
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`)

// errTooManyStreams is a tenant over its stream cap.
var errTooManyStreams = errf(http.StatusTooManyRequests, "too_many_streams", "",
	"this tenant holds as many connections (streams, waiting requests, long polls) as it may; close one or try again shortly")

// acquire takes a stream slot for tenant; the returned renew and release keep
// and end it. errTooManyStreams: the tenant is at its cap.
func (c *streamCap) acquire(ctx context.Context, tenant string) (renew, release func(), err error) {
	noop := func() {}
	if c.max <= 0 {
		return noop, noop, nil
	}
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	key := rkeys.TenantStreams(tenant)
	now := time.Now()
	ok, err := acquireStream.Run(ctx, c.rdb, []string{key}, now.UnixMilli(), c.max, now.Add(c.lease).UnixMilli(), id, c.lease.Milliseconds()*2).Int()
	if err != nil {
		return nil, nil, errors.Join(store.ErrUnavailable, err)
	}
	if ok == 0 {
		return nil, nil, errTooManyStreams
	}
	renew = func() {
		_ = renewStream.Run(context.Background(), c.rdb, []string{key}, time.Now().Add(c.lease).UnixMilli(), id, c.lease.Milliseconds()*2).Err()
	}
	release = func() { _ = c.rdb.ZRem(context.Background(), key, id).Err() }
	return renew, release, nil
}

// openStream takes one of the tenant's stream slots for a request, answering
// 429 with Retry-After when the tenant is at its cap.
func (s *Server) openStream(c echo.Context, tenant string) (renew, release func(), err error) {
	renew, release, err = s.cap.acquire(c.Request().Context(), tenant)
	if errors.Is(err, errTooManyStreams) {
		c.Response().Header().Set("Retry-After", retryAfterSeconds)
	}
	return renew, release, err
}

// sseHead starts a text/event-stream answer served from the handler.
func sseHead(res *echo.Response) {
	h := res.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // let proxies pass events through at once
	res.WriteHeader(http.StatusOK)
}

// sseHeartbeat writes a comment line that keeps an idle stream open.
func sseHeartbeat(res *echo.Response) error {
	if _, err := res.Write([]byte(": heartbeat\n\n")); err != nil {
		return err
	}
	res.Flush()
	return nil
}

// renewEvery calls renew every d until the returned stop is called.
func renewEvery(d time.Duration, renew func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				renew()
			}
		}
	}()
	return func() { close(done) }
}

// leasedSink renews a stream's slot at every heartbeat.
type leasedSink struct {
	stream.Sink
	renew func()
}

func (s leasedSink) Heartbeat() error {
	s.renew()
	return s.Sink.Heartbeat()
}

// streamTokenTTL is how long a stream token lets a page follow its job,
// reconnects included: a page asks for a new one when a reconnect is refused.
const streamTokenTTL = 10 * time.Minute

// issueStreamToken answers a short-lived token that lets a page (whose
// EventSource cannot send an Authorization header) follow one job of the
// caller's tenant: GET …/stream?token=…. The token is bound to the key that
// asked for it: once that key is no longer configured, it is refused.
func (s *Server) issueStreamToken(c echo.Context) error {
	ctx := c.Request().Context()
	j, err := s.jobs.Get(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return err
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	digest, _ := c.Get(keyDigestKey).(string)
	if err := s.rdb.Set(ctx, rkeys.StreamToken(token), j.Tenant+"\n"+j.ID+"\n"+digest, streamTokenTTL).Err(); err != nil {
		return errors.Join(store.ErrUnavailable, err)
	}
	return c.JSON(http.StatusOK, map[string]any{
		"token": token, "expires_in": int(streamTokenTTL.Seconds()),
		"stream_url": jobURL(j.ID) + "/stream?token=" + token,
	})
}

// streamAuth accepts a stream token (?token=) for the job it was issued for,
// else the usual Authorization header.
func (s *Server) streamAuth(next echo.HandlerFunc) echo.HandlerFunc {
	bearer := auth(s.keys)(next)
	return func(c echo.Context) error {
		token := c.QueryParam("token")
		if token == "" {
			return bearer(c)
		}
		v, err := s.rdb.Get(c.Request().Context(), rkeys.StreamToken(token)).Result()
		if errors.Is(err, redis.Nil) {
			return errf(http.StatusUnauthorized, "unauthorized", "token", "the stream token is unknown or expired; ask for a new one")
		}
		if err != nil {
			return errors.Join(store.ErrUnavailable, err)
		}
		fields := strings.SplitN(v, "\n", 3)
		for len(fields) < 3 {
			fields = append(fields, "")
		}
		tenant, id, digest := fields[0], fields[1], fields[2]
		if id != c.Param("id") {
			return errf(http.StatusUnauthorized, "unauthorized", "token", "the stream token is for another job")
		}
		if !s.keys.stillValid(digest, tenant) {
			return errf(http.StatusUnauthorized, "unauthorized", "token", "the key that asked for this stream token is no longer valid; ask for a new one")
		}
		c.Set(tenantKey, tenant)
		return next(c)
	}
}
