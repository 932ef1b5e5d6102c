// Package e2e runs the real binaries against a real Redis: several API and
// worker processes, standalone mode, outages and the config check.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

var apiBin, workerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "chatfleet-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	apiBin, workerBin, err = testkit.BuildBinaries(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fleetEnv is the environment of a process of the fleet under test.
func fleetEnv(redisURL string, extra map[string]string) []string {
	vars := map[string]string{
		"CHATFLEET_REDIS_URL": redisURL,
		"CHATFLEET_HTTP_ADDR": "127.0.0.1:0",
		"CHATFLEET_LOG_LEVEL": "info",
	}
	for k, v := range extra {
		vars[k] = v
	}
	return testkit.Env(vars)
}

var httpc = &http.Client{Timeout: 70 * time.Second}

type response struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    string
}

func do(t testing.TB, method, url string, body any, header map[string]string) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := httpc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := response{Status: res.StatusCode, Header: res.Header, Raw: string(raw)}
	_ = json.Unmarshal(raw, &r.Body)
	return r
}

func submit(t testing.TB, base, session, message string, header map[string]string) response {
	t.Helper()
	return do(t, http.MethodPost, base+"/api/v1/chat/jobs", map[string]any{"session_id": session, "message": message}, header)
}

// handedOut is how many jobs the scheduler has handed out to workers.
func handedOut(t testing.TB, rdb redis.UniversalClient) int {
	t.Helper()
	n, err := rdb.Get(context.Background(), rkeys.SchedPrefix()+"handed").Int()
	if err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	return n
}

// waitJob long-polls a job until it is finished.
func waitJob(t testing.TB, base, id string) response {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := do(t, http.MethodGet, base+"/api/v1/chat/jobs/"+id+"?wait=30s", nil, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("GET job %s: %d %s", id, r.Status, r.Raw)
		}
		switch r.Body["status"] {
		case "succeeded", "failed", "canceled":
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s not finished after 60s: %s", id, r.Raw)
		}
	}
}

func content(r response) string {
	res, _ := r.Body["result"].(map[string]any)
	s, _ := res["content"].(string)
	return s
}

// machineLag measures how late a 20 ms sleep in the test process wakes, at
// worst, from now until the returned stop is called: the machine's own
// scheduling noise over that window. A test whose time bound is the feature
// (a takeover within 5 s) adds it to the bound, so that a loaded machine
// does not fail the feature while a quiet one holds it to the figure.
func machineLag() (stop func() time.Duration) {
	done := make(chan struct{})
	worst := make(chan time.Duration, 1)
	go func() {
		var w time.Duration
		for {
			select {
			case <-done:
				worst <- w
				return
			default:
			}
			start := time.Now()
			time.Sleep(20 * time.Millisecond)
			w = max(w, time.Since(start)-20*time.Millisecond)
		}
	}()
	return func() time.Duration { close(done); return <-worst }
}
