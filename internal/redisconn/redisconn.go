// Package redisconn opens the one Redis client a process shares between its
// own keys and asynq.
package redisconn

import (
	"context"
	"errors"
	"fmt"
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

// Open connects to a redis://, rediss://, redis-socket:// or redis-sentinel://
// URL. name labels the connections in CLIENT LIST (chatfleet-api, …).
// go-redis's own messages (reconnect attempts) go to log at debug level.
func Open(url, name string, log zerolog.Logger) (redis.UniversalClient, error) {
	opt, err := asynq.ParseRedisURI(url)
	if err != nil {
		// The parse error may quote the URL, password included: do not pass it on.
		return nil, errors.New("parse redis url: malformed")
	}
	redis.SetLogger(logAdapter{log.With().Str("logger", "go-redis").Logger()})
	switch o := opt.(type) {
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

type logAdapter struct{ l zerolog.Logger }

func (a logAdapter) Printf(_ context.Context, format string, v ...any) {
	a.l.Debug().Msg(fmt.Sprintf(format, v...))
}
