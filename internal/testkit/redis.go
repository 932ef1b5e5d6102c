// Package testkit starts the real things tests run against: a private
// redis-server per test and the chatfleet binaries as processes.
package testkit

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a private redis-server on a free loopback port.
type Redis struct {
	t     testing.TB
	Port  int
	dir   string
	aof   bool
	extra []string // more redis-server arguments
	// sentinel, when set, is the Sentinel configuration to run with instead
	// of a server's (see StartSentinel).
	sentinel string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when the running server exits; nil when stopped
	log      *bytes.Buffer
}

// RedisOption tunes StartRedis.
type RedisOption func(*Redis)

// WithAOF turns on append-only persistence so data survives Stop and Restart.
func WithAOF() RedisOption { return func(r *Redis) { r.aof = true } }

// WithArgs passes more arguments to redis-server.
func WithArgs(args ...string) RedisOption {
	return func(r *Redis) { r.extra = append(r.extra, args...) }
}

// StartRedis starts redis-server and stops it when the test ends. A missing
// redis-server fails the test with the install command; it never skips.
func StartRedis(t testing.TB, opts ...RedisOption) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed; the integration tests need a real Redis 7: " +
			"apt-get install -y redis-server (make test and .ci/run install it when missing)")
	}
	r := &Redis{t: t, dir: t.TempDir()}
	for _, o := range opts {
		o(r)
	}
	var lastErr error
	for range 5 { // a free port can be taken between picking and binding
		r.Port = FreePort(t)
		if r.clusterNode() {
			r.Port = clusterPort(t)
		}
		if lastErr = r.start(); lastErr == nil {
			t.Cleanup(r.Stop)
			return r
		}
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return nil
}

// URL is the redis:// URL of the server.
func (r *Redis) URL() string { return fmt.Sprintf("redis://%s", r.Addr()) }

// Addr is host:port.
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port)) }

// Client returns a go-redis client closed when the test ends.
func (r *Redis) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	r.t.Cleanup(func() { _ = c.Close() })
	return c
}

// UniversalClient is Client, for code that takes either kind.
func (r *Redis) UniversalClient() redis.UniversalClient { return r.Client() }

// Backend is a Redis the fleet runs on: one server or a cluster.
type Backend interface {
	URL() string
	UniversalClient() redis.UniversalClient
}

func (r *Redis) start() error {
	aof := "no"
	if r.aof {
		aof = "yes"
	}
	r.log = &bytes.Buffer{}
	args := append([]string{
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", aof, "--appendfsync", "always",
		"--dir", r.dir, "--daemonize", "no", "--protected-mode", "yes"}, r.extra...)
	if r.sentinel != "" {
		conf := filepath.Join(r.dir, "sentinel.conf") // Sentinel rewrites it as it learns
		if err := os.WriteFile(conf, []byte(r.sentinel), 0o600); err != nil {
			return err
		}
		args = []string{conf, "--sentinel", "--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1", "--dir", r.dir, "--daemonize", "no"}
	}
	r.cmd = exec.Command("redis-server", args...)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(exited) }()
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited at start: %s", r.log.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			r.exited = exited
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = r.cmd.Process.Kill()
	<-exited
	return fmt.Errorf("redis-server did not answer within 10s: %s", r.log.String())
}

// Signal sends sig to the server: SIGSTOP freezes it (a stalled Redis),
// SIGCONT lets it go on.
func (r *Redis) Signal(sig syscall.Signal) {
	if r.cmd != nil && r.exited != nil {
		_ = r.cmd.Process.Signal(sig)
	}
}

// Stop ends the server (SIGTERM, then SIGKILL after 5 s). Safe to call twice.
func (r *Redis) Stop() {
	if r.cmd == nil || r.exited == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGCONT) // a frozen server cannot end
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	r.exited = nil
}

// Kill ends the server with SIGKILL: a crash, nothing flushed or handed over.
func (r *Redis) Kill() {
	if r.cmd == nil || r.exited == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exited
	r.exited = nil
}

// Restart starts the server again on the same port (and, with AOF, the same data).
func (r *Redis) Restart() {
	r.t.Helper()
	r.Stop()
	var err error
	for range 50 { // the port may linger briefly after the old process exits
		if err = r.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatalf("restart redis-server: %v", err)
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
