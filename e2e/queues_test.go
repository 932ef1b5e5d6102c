package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// swrr is the first n picks of a smooth weighted round robin over lanes
// that all stay busy, as docs/design.md describes the scheduler's choice of
// lane: each turn every lane adds its weight, the largest goes (the first
// listed on a tie) and gives back the total.
func swrr(lanes []string, weights []int, n int) []string {
	cur := make([]int, len(lanes))
	total := 0
	for _, w := range weights {
		total += w
	}
	var out []string
	for range n {
		best := -1
		for i, w := range weights {
			cur[i] += w
			if best < 0 || cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		out = append(out, lanes[best])
	}
	return out
}

// Priority lanes share a worker 6:3:1. One tenant queues 4 low, then 8
// normal, then 16 high jobs (oldest first would run the low ones first)
// before the only worker, of one slot, starts. The order in which the jobs
// reach the upstream is the order they started: its first 20 follow the
// smooth weighted round robin over high 6, normal 3, low 1 exactly
// (H N H H N H L H N H, twice: 12, 6 and 2), and within a lane the jobs
// start in submission order.
func TestPriorityLanesStartSixThreeOne(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	env := providerEnv(fake, map[string]string{"CHATFLEET_WORKER_CONCURRENCY": "1"})
	apis, _ := fleet(t, rd, 1, 0, env)
	base := apis[0].URL()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := client.New(base)
	counts := map[string]int{"low": 4, "normal": 8, "high": 16}
	var ids []string
	for _, lane := range []string{"low", "normal", "high"} {
		for i := range counts[lane] {
			sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("%s-%d", lane, i), Message: fmt.Sprintf("%s %d", lane, i), Priority: lane})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, sub.JobID)
		}
	}
	testkit.StartProc(t, "worker-0", workerBin, fleetEnv(rd.URL(), env))
	for _, id := range ids {
		if j, err := c.Wait(ctx, id); err != nil || j.Status != "succeeded" {
			t.Fatalf("job %s: %+v %v", id, j, err)
		}
	}
	reqs := fake.Requests()
	if len(reqs) != len(ids) {
		t.Fatalf("the upstream got %d calls for %d jobs", len(reqs), len(ids))
	}
	var order []string // lane of each call, in call order
	next := map[string]int{}
	for i, msgs := range reqs {
		lane, n, _ := strings.Cut(msgs[len(msgs)-1].Content, " ")
		if want := fmt.Sprint(next[lane]); n != want {
			t.Fatalf("call %d is %s job %s, want %s job %s: a lane's jobs start in submission order", i, lane, n, lane, want)
		}
		next[lane]++
		order = append(order, lane)
	}
	const first = 20
	want := swrr([]string{"high", "normal", "low"}, []int{6, 3, 1}, first)
	t.Logf("first %d starts: %v", first, order[:first])
	if !slices.Equal(order[:first], want) {
		t.Fatalf("the first %d starts are\n%v\nwant 6:3:1 by smooth weighted round robin\n%v", first, order[:first], want)
	}
}

// An idle followed stream gets `: heartbeat` comment lines every
// CHATFLEET_SSE_HEARTBEAT: a job behind a slow one on a worker of one slot
// is followed from its submit, and at least two heartbeats come before its
// first event; then its events end with done.
func TestIdleStreamGetsHeartbeats(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{
		"CHATFLEET_WORKER_CONCURRENCY": "1", "CHATFLEET_SIM_LATENCY": "1s", "CHATFLEET_SSE_HEARTBEAT": "200ms",
	})
	base := apis[0].URL()
	slow := submit(t, base, "slow", "the slow one", nil)
	followed := submit(t, base, "followed", "behind it", nil)
	if slow.Status != http.StatusAccepted || followed.Status != http.StatusAccepted {
		t.Fatalf("submits: %d %s; %d %s", slow.Status, slow.Raw, followed.Status, followed.Raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/chat/jobs/"+followed.Body["job_id"].(string)+"/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	heartbeats, events := 0, 0 // heartbeats before the first event; events
	var lines []string
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		lines = append(lines, line)
		switch {
		case line == ": heartbeat" && events == 0:
			heartbeats++
		case strings.HasPrefix(line, "id: "):
			events++
		}
		if line == "event: done" {
			break
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading the stream: %v (read %q)", err, lines)
	}
	t.Logf("%d heartbeats before the first of %d events", heartbeats, events)
	if heartbeats < 2 || events == 0 || !slices.Contains(lines, "event: done") {
		t.Fatalf("%d heartbeats before the first event, %d events, want at least 2 heartbeats then events to done; the stream:\n%s",
			heartbeats, events, strings.Join(lines, "\n"))
	}
}
