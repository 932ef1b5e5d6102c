// Package redisconn opens the one Redis client a process shares between its
// own keys and asynq.
package redisconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Timeouts are short and dial retries few, so that an unreachable Redis turns
// into a quick 503 instead of a request that hangs. A healthy local Redis
// answers in well under a millisecond.
const (
	dialTimeout  = time.Second
	ioTimeout    = 3 * time.Second
	dialAttempts = 2
	cmdRetries   = 2
	retryBackoff = 100 * time.Millisecond
)

// Open connects to a redis://, rediss://, redis-socket://, redis-sentinel://,
// redis-cluster:// or rediss-cluster:// URL. name labels the connections in
// CLIENT LIST (chatfleet-api, …). go-redis's own messages (reconnect
// attempts) go to log at debug level.
func Open(url, name string, log zerolog.Logger) (redis.UniversalClient, error) {
	opt, err := ConnOpt(url)
	if err != nil {
		return nil, err
	}
	redis.SetLogger(logAdapter{log.With().Str("logger", "go-redis").Logger()})
	switch o := opt.(type) {
	case asynq.RedisClusterClientOpt:
		return redis.NewClusterClient(&redis.ClusterOptions{
			ClientName: name, Addrs: o.Addrs, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig,
			DialTimeout: dialTimeout, ReadTimeout: ioTimeout, WriteTimeout: ioTimeout,
			DialerRetries: dialAttempts, MaxRetryBackoff: retryBackoff,
			// A failover moves slots without a MOVED to anyone who asks the
			// dead master: the slot map is read again every second (one
			// CLUSTER SLOTS, only while commands run) instead of every minute.
			ClusterStateReloadInterval: time.Second,
			MaxRedirects:               8, MaxRetries: cmdRetries,
		}), nil
	case asynq.RedisClientOpt:
		return redis.NewClient(&redis.Options{
			ClientName: name, Network: o.Network, Addr: o.Addr, Username: o.Username, Password: o.Password,
			DB: o.DB, TLSConfig: o.TLSConfig, PoolSize: o.PoolSize,
			DialTimeout: dialTimeout, ReadTimeout: ioTimeout, WriteTimeout: ioTimeout,
			DialerRetries: dialAttempts, MaxRetries: cmdRetries, MaxRetryBackoff: retryBackoff,
		}), nil
	case asynq.RedisFailoverClientOpt:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			ClientName: name, MasterName: o.MasterName, SentinelAddrs: o.SentinelAddrs, SentinelPassword: o.SentinelPassword,
			Username: o.Username, Password: o.Password, DB: o.DB, TLSConfig: o.TLSConfig, PoolSize: o.PoolSize,
			DialTimeout: dialTimeout, ReadTimeout: ioTimeout, WriteTimeout: ioTimeout,
			DialerRetries: dialAttempts, MaxRetries: cmdRetries, MaxRetryBackoff: retryBackoff,
		}), nil
	}
	return nil, fmt.Errorf("redis url scheme not supported: %T", opt)
}

// ConnOpt parses a Redis URL into asynq's connection options; asynq parses
// every scheme but the cluster ones, which are read here.
func ConnOpt(u string) (asynq.RedisConnOpt, error) {
	if strings.HasPrefix(u, "redis-cluster://") || strings.HasPrefix(u, "rediss-cluster://") {
		return parseCluster(u)
	}
	opt, err := asynq.ParseRedisURI(u)
	if err != nil {
		// The parse error may quote the URL, password included: do not pass it on.
		return nil, errors.New("parse redis url: malformed")
	}
	return opt, nil
}

// parseCluster reads redis-cluster://[user:password@]host:port[,host:port…]
// (rediss-cluster:// for TLS). The addresses are seeds: the client learns
// the rest of the cluster from them.
func parseCluster(u string) (asynq.RedisClusterClientOpt, error) {
	scheme, rest, _ := strings.Cut(u, "://")
	var o asynq.RedisClusterClientOpt
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		info, err := url.Parse("redis://" + rest[:at+1] + "x")
		if err != nil {
			return o, errors.New("parse redis url: malformed user info")
		}
		o.Username = info.User.Username()
		o.Password, _ = info.User.Password()
		rest = rest[at+1:]
	}
	rest = strings.TrimSuffix(rest, "/")
	for _, a := range strings.Split(rest, ",") {
		host, port, err := net.SplitHostPort(a)
		if p, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || p < 1 || p > 65535 || strings.ContainsAny(a, "/?#") {
			return o, fmt.Errorf("%q is not a host:port (want %s://[user:password@]host:port[,host:port…])", a, scheme)
		}
		o.Addrs = append(o.Addrs, a)
	}
	if scheme == "rediss-cluster" {
		// Verified against the first seed's name, as go-redis does for its
		// own cluster URLs: the nodes share a certificate naming them all.
		host, _, _ := net.SplitHostPort(o.Addrs[0])
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	}
	return o, nil
}

type logAdapter struct{ l zerolog.Logger }

func (a logAdapter) Printf(_ context.Context, format string, v ...any) {
	a.l.Debug().Msg(fmt.Sprintf(format, v...))
}
