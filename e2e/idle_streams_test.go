package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// metric reads one unlabelled sample from a process's /metrics.
func metric(t *testing.T, base, name string) float64 {
	t.Helper()
	res, err := httpc.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("%s has no metric %s", base, name)
	return 0
}

// apiRedisConns counts the API process's connections in CLIENT LIST.
func apiRedisConns(t *testing.T, rd *testkit.Redis) int {
	t.Helper()
	list, err := rd.Client().ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(list, "name=chatfleet-api ")
}

// 2,000 idle SSE streams (queued jobs, no worker) on one API process use a
// bounded number of Redis connections, and its goroutines return to the
// baseline once the clients leave.
func TestTwoThousandIdleStreams(t *testing.T) {
	rd := testkit.StartRedis(t)
	// A stream whose client left is noticed at the next write: with a 1 s
	// heartbeat, within about 2 s.
	apis, _ := fleet(t, rd, 1, 0, map[string]string{"CHATFLEET_SSE_HEARTBEAT": "1s"})
	api := apis[0]
	const n = 2000

	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := submit(t, api.URL(), fmt.Sprintf("idle-%d", i), "wait", nil)
			if r.Status != http.StatusAccepted {
				t.Errorf("submit %d: %d %s", i, r.Status, r.Raw)
				return
			}
			ids[i] = r.Body["job_id"].(string)
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	httpc.CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)
	baseGoroutines := metric(t, api.URL(), "go_goroutines")
	baseRSS := metric(t, api.URL(), "process_resident_memory_bytes")

	streamc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1}}
	bodies := make([]io.ReadCloser, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res, err := streamc.Get(api.URL() + "/api/v1/chat/jobs/" + ids[i] + "/stream")
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				return
			}
			if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
				t.Errorf("stream %d: %d %s", i, res.StatusCode, res.Header.Get("Content-Type"))
			}
			bodies[i] = res.Body
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	held := metric(t, api.URL(), "chatfleet_stream_clients")
	conns := apiRedisConns(t, rd)
	rss := metric(t, api.URL(), "process_resident_memory_bytes")
	during := metric(t, api.URL(), "go_goroutines")
	t.Logf("%d streams held: %d Redis connections from the API process, %.0f goroutines (baseline %.0f), RSS +%.1f KiB per stream",
		int(held), conns, during, baseGoroutines, (rss-baseRSS)/n/1024)
	if held != n {
		t.Fatalf("chatfleet_stream_clients = %v, want %d", held, n)
	}
	// One pub/sub connection plus the pool, whose size does not depend on the
	// number of streams (go-redis: 10 per CPU).
	if conns > 25 {
		t.Fatalf("%d Redis connections for %d streams", conns, n)
	}

	for _, b := range bodies {
		b.Close()
	}
	streamc.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for {
		g := metric(t, api.URL(), "go_goroutines")
		if g <= baseGoroutines+5 && metric(t, api.URL(), "chatfleet_stream_clients") == 0 {
			t.Logf("goroutines back to %.0f (baseline %.0f)", g, baseGoroutines)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines still %.0f, baseline %.0f", g, baseGoroutines)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
