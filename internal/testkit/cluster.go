package testkit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a private Redis Cluster of 3 masters and 3 replicas on free
// loopback ports, made with redis-cli --cluster create.
type Cluster struct {
	t     testing.TB
	Nodes []*Redis
}

// NodeTimeout is the cluster's node timeout: a master that does not answer
// for this long is failed over to its replica (a few seconds in all).
const NodeTimeout = 1500 * time.Millisecond

func (r *Redis) clusterNode() bool { return slices.Contains(r.extra, "--cluster-enabled") }

// clusterPort returns a free port whose cluster bus port (port + 10000) is
// free too; both must stay at or below 65535.
func clusterPort(t testing.TB) int {
	t.Helper()
	for range 200 {
		p := 20000 + rand.IntN(35000)
		ok := true
		for _, q := range []int{p, p + 10000} {
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(q)))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no free pair of ports for a cluster node")
	return 0
}

// StartCluster starts the six nodes, makes them a cluster and waits until
// every node sees all slots served. Stopped when the test ends.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redis-cli is not installed; the cluster tests need it: apt-get install -y redis-tools " +
			"(make test and .ci/run install it when missing)")
	}
	c := &Cluster{t: t}
	addrs := make([]string, 6)
	for i := range 6 {
		c.Nodes = append(c.Nodes, StartRedis(t, WithArgs("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.Itoa(int(NodeTimeout/time.Millisecond)),
			// a replica takes over however long it was cut off
			"--cluster-replica-validity-factor", "0",
			// replicas sync at once, not after the default 5 s wait for more
			"--repl-diskless-sync-delay", "0")))
		addrs[i] = c.Nodes[i].Addr()
	}
	out, err := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...),
		"--cluster-replicas", "1", "--cluster-yes")...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitHealthy(30 * time.Second)
	c.waitReplicasInSync(30 * time.Second)
	return c
}

// waitReplicasInSync waits until each master's replica acknowledges its
// writes (WAIT 1): after the initial sync a master streams to a replica only
// from its first acknowledgement, and a failover before that loses all.
func (c *Cluster) waitReplicasInSync(within time.Duration) {
	c.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(within)
	for _, n := range c.Nodes {
		cl := n.Client()
		for {
			info, err := cl.Info(ctx, "replication").Result()
			if err == nil && strings.Contains(info, "role:slave") {
				break
			}
			if err == nil {
				var acked int64
				if acked, err = cl.Wait(ctx, 1, time.Second).Result(); err == nil && acked >= 1 {
					break
				}
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("the replica of %s did not acknowledge within %s: %v", n.Addr(), within, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// UniversalClient is Client, for code that takes either kind.
func (c *Cluster) UniversalClient() redis.UniversalClient { return c.Client() }

// URL is the cluster's redis-cluster:// URL (every node as a seed).
func (c *Cluster) URL() string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr()
	}
	return "redis-cluster://" + strings.Join(addrs, ",")
}

// Client returns a cluster client closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr()
	}
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, MaxRedirects: 8, ClusterStateReloadInterval: time.Second})
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// MasterOf returns the node that serves a key's slot now.
func (c *Cluster) MasterOf(key string) *Redis {
	c.t.Helper()
	cl := c.Client()
	m, err := cl.MasterForKey(context.Background(), key)
	if err != nil {
		c.t.Fatalf("master of %q: %v", key, err)
	}
	for _, n := range c.Nodes {
		if n.Addr() == m.Options().Addr {
			return n
		}
	}
	c.t.Fatalf("master %s of %q is not a node of the cluster", m.Options().Addr, key)
	return nil
}

// WaitHealthy waits until every running node reports cluster_state:ok with
// all 16384 slots served by masters that answer.
func (c *Cluster) WaitHealthy(within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		if last = c.unhealthy(); last == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("cluster not healthy within %s: %s", within, last)
}

// unhealthy says what is not yet right: a running node that does not see
// every slot served, or that still counts a stopped node as a working master.
func (c *Cluster) unhealthy() string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		if n.exited == nil {
			continue // stopped or killed
		}
		cl := redis.NewClient(&redis.Options{Addr: n.Addr(), MaxRetries: -1})
		info, err := cl.ClusterInfo(ctx).Result()
		var nodes string
		if err == nil {
			nodes, err = cl.ClusterNodes(ctx).Result()
		}
		cl.Close()
		if err != nil {
			return fmt.Sprintf("%s: %v", n.Addr(), err)
		}
		if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			return fmt.Sprintf("%s: %s", n.Addr(), strings.ReplaceAll(info, "\r\n", " "))
		}
		for _, line := range strings.Split(nodes, "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
				continue // not a master serving slots
			}
			for _, d := range c.Nodes {
				if d.exited == nil && strings.HasPrefix(f[1], d.Addr()+"@") {
					return fmt.Sprintf("%s still sees the stopped %s as a master with slots", n.Addr(), d.Addr())
				}
			}
		}
	}
	return ""
}

// Masters returns the running nodes that are masters now.
func (c *Cluster) Masters() []*Redis {
	var out []*Redis
	for _, n := range c.Nodes {
		if n.exited == nil {
			continue
		}
		info, err := n.Client().Info(context.Background(), "replication").Result()
		if err == nil && strings.Contains(info, "role:master") {
			out = append(out, n)
		}
	}
	return out
}

// Stop stops every node (also done when the test ends).
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Stop()
	}
}

// MoveSlot moves a hash slot, with its keys, from one master to another, as
// resharding does (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE).
func (c *Cluster) MoveSlot(slot int, from, to *Redis) {
	c.t.Helper()
	ctx := context.Background()
	src, dst := from.Client(), to.Client()
	srcID, err := src.ClusterMyID(ctx).Result()
	if err != nil {
		c.t.Fatal(err)
	}
	dstID, err := dst.ClusterMyID(ctx).Result()
	if err != nil {
		c.t.Fatal(err)
	}
	must := func(err error) {
		c.t.Helper()
		if err != nil {
			c.t.Fatalf("move slot %d: %v", slot, err)
		}
	}
	must(dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err())
	must(src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		must(err)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", "127.0.0.1", to.Port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(src.Do(ctx, args...).Err())
	}
	for _, n := range c.Masters() {
		must(n.Client().Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	}
}
