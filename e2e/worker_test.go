package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// A worker with CHATFLEET_WORKER_CONCURRENCY=2 never runs more than two jobs at
// once, and does run two: checked from the jobs' own start and finish times.
func TestWorkerHonoursConcurrency(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_WORKER_CONCURRENCY": "2", "CHATFLEET_SIM_LATENCY": "300ms"})
	var ids []string
	for i := range 6 {
		r := submit(t, apis[0].URL(), fmt.Sprintf("conc-%d", i), "x", nil)
		if r.Status != http.StatusAccepted {
			t.Fatalf("submit: %d %s", r.Status, r.Raw)
		}
		ids = append(ids, r.Body["job_id"].(string))
	}
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, id := range ids {
		r := waitJob(t, apis[0].URL(), id)
		started, _ := time.Parse(time.RFC3339Nano, r.Body["started_at"].(string))
		finished, _ := time.Parse(time.RFC3339Nano, r.Body["finished_at"].(string))
		edges = append(edges, edge{started, +1}, edge{finished, -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].delta < edges[j].delta // a finish before a start at the same instant
		}
		return edges[i].at.Before(edges[j].at)
	})
	running, peak := 0, 0
	for _, e := range edges {
		running += e.delta
		peak = max(peak, running)
	}
	if peak != 2 {
		t.Fatalf("at most %d jobs ran at once, want exactly 2", peak)
	}
}

// SIGTERM while a job runs: the worker stops taking jobs, lets the running one
// finish, and exits 0. The job is not lost and not run twice.
func TestWorkerDrainsOnSIGTERM(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, workers := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_SIM_LATENCY": "1500ms"})
	r := submit(t, apis[0].URL(), "drain", "finish me", nil)
	id := r.Body["job_id"].(string)
	deadline := time.Now().Add(10 * time.Second)
	for {
		g := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs/"+id, nil, nil)
		if g.Body["status"] == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job never became active: %s", g.Raw)
		}
		time.Sleep(20 * time.Millisecond)
	}
	workers[0].Signal(syscall.SIGTERM)
	code, exited := workers[0].Wait(20 * time.Second)
	if !exited || code != 0 {
		t.Fatalf("worker exited=%v code=%d", exited, code)
	}
	g := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs/"+id, nil, nil)
	if g.Body["status"] != "succeeded" || g.Body["attempts"] != float64(1) || content(g) != "echo: finish me" {
		t.Fatalf("after drain: %s", g.Raw)
	}
}

var logTimestamp = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

// Every log line is one JSON object with an RFC 3339 UTC millisecond timestamp;
// request and job lines carry their ids, status and duration; no message text.
func TestLogsAreStructured(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, workers := fleet(t, rd, 1, 1, nil)
	secret := "a-very-private-message"
	r := submit(t, apis[0].URL(), "logs", secret, nil)
	waitJob(t, apis[0].URL(), r.Body["job_id"].(string))
	// The worker logs right after recording the result; give it that moment.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if strings.Contains(strings.Join(workers[0].Logs(), "\n"), `"job finished"`) {
			break
		}
	}

	check := func(p *testkit.Proc, message string, fields ...string) {
		t.Helper()
		found := false
		for _, line := range p.Logs() {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("%s logged a non-JSON line: %q", p.Name, line)
			}
			ts, _ := m["timestamp"].(string)
			if !logTimestamp.MatchString(ts) || m["level"] == nil || m["message"] == nil {
				t.Fatalf("%s line lacks timestamp/level/message: %q", p.Name, line)
			}
			if strings.Contains(line, secret) {
				t.Fatalf("%s logged message text: %q", p.Name, line)
			}
			if m["message"] != message {
				continue
			}
			found = true
			for _, f := range fields {
				if m[f] == nil {
					t.Errorf("%s %q line lacks %s: %q", p.Name, message, f, line)
				}
			}
		}
		if !found {
			t.Errorf("%s never logged %q", p.Name, message)
		}
	}
	check(apis[0], "request", "request_id", "status", "duration_ms", "route", "tenant")
	check(workers[0], "job finished", "job_id", "session_id", "tenant", "status", "duration_ms")
	check(workers[0], "Starting processing") // asynq's own line, through the same logger
}
