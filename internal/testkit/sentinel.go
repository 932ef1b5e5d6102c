package testkit

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the master name the test Sentinel watches.
const SentinelMaster = "chatfleet"

// Sentinel is a private master, its replica and one Sentinel watching them
// (quorum 1), on free loopback ports. The Sentinel is redis-server in
// sentinel mode (`redis-server <conf> --sentinel`), so Debian's redis-server
// package is all it needs; the redis-sentinel package is not.
type Sentinel struct {
	t        testing.TB
	Master   *Redis
	Replica  *Redis
	Sentinel *Redis
	sc       *redis.SentinelClient
}

// StartSentinel starts the three and waits until the replica follows the
// master and the Sentinel knows both. Stopped when the test ends.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	s := &Sentinel{t: t, Master: StartRedis(t)}
	s.Replica = StartRedis(t, WithArgs("--replicaof", "127.0.0.1", strconv.Itoa(s.Master.Port)))
	ctx := context.Background()
	m := s.Master.Client()
	deadline := time.Now().Add(30 * time.Second)
	for { // the replica acknowledges the master's writes
		if n, err := m.Wait(ctx, 1, time.Second).Result(); err == nil && n >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replica did not follow the master within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Sentinel = StartRedis(t, func(r *Redis) {
		r.sentinel = fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 1\n"+
			"sentinel down-after-milliseconds %[1]s 1000\nsentinel failover-timeout %[1]s 5000\n", SentinelMaster, s.Master.Port)
	})
	s.sc = redis.NewSentinelClient(&redis.Options{Addr: s.Sentinel.Addr()})
	t.Cleanup(func() { _ = s.sc.Close() })
	for s.replicasKnown() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the Sentinel did not discover the replica within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

func (s *Sentinel) replicasKnown() int {
	r, err := s.sc.Replicas(context.Background(), SentinelMaster).Result()
	if err != nil {
		return 0
	}
	return len(r)
}

// URL is the redis-sentinel:// URL of the master.
func (s *Sentinel) URL() string {
	return fmt.Sprintf("redis-sentinel://%s?master=%s", s.Sentinel.Addr(), SentinelMaster)
}

// UniversalClient is a failover client through the Sentinel.
func (s *Sentinel) UniversalClient() redis.UniversalClient {
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: SentinelMaster, SentinelAddrs: []string{s.Sentinel.Addr()}})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// WaitPromoted waits until the Sentinel names the replica as the master.
func (s *Sentinel) WaitPromoted(within time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		addr, err := s.sc.GetMasterAddrByName(context.Background(), SentinelMaster).Result()
		if err == nil && len(addr) == 2 && net.JoinHostPort(addr[0], addr[1]) == s.Replica.Addr() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("the Sentinel did not promote the replica within %s", within)
}
