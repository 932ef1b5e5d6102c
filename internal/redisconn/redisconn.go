// Package redisconn opens the one Redis client a process shares between its
// own keys and asynq.
package redisconn

import (
	"errors"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Open connects to a redis://, rediss://, redis-socket:// or redis-sentinel:// URL.
// Timeouts are short so that an unreachable Redis turns into a quick 503, not a
// request that hangs.
func Open(url string) (redis.UniversalClient, error) {
	opt, err := asynq.ParseRedisURI(url)
	if err != nil {
		// The parse error may quote the URL, password included: do not pass it on.
		return nil, errors.New("parse redis url: malformed")
	}
	switch o := opt.(type) {
	case asynq.RedisClientOpt:
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = time.Second, 3*time.Second, 3*time.Second
		opt = o
	case asynq.RedisFailoverClientOpt:
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = time.Second, 3*time.Second, 3*time.Second
		opt = o
	}
	c, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, errors.New("redis url gives no usable client")
	}
	return c, nil
}
