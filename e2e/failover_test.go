package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/tasks"
)

// A master of a 3+3 Redis Cluster is SIGKILLed while jobs run: the one that
// serves the normal queue (asynq's keys of a queue share one slot), so that
// both asynq and chatfleet's own keys of a third of the buckets lose their
// master at once.
func TestClusterMasterFailover(t *testing.T) {
	cl := testkit.StartCluster(t)
	victim := cl.MasterOf("asynq:{" + tasks.QueueName(tasks.PriorityNormal) + "}:pending")
	survivesFailover(t, cl, victim.Kill, func() { cl.WaitHealthy(30 * time.Second) })
}

// The master behind a Sentinel (one replica, one Sentinel with quorum 1) is
// SIGKILLed while jobs run.
func TestSentinelFailover(t *testing.T) {
	s := testkit.StartSentinel(t)
	survivesFailover(t, s, s.Master.Kill, func() { s.WaitPromoted(30 * time.Second) })
}

// survivesFailover runs jobs on rd, calls kill while they run and promoted
// until the replica has taken over. The fleet goes on without restarts; jobs
// submitted after the promotion succeed; and every job that was in flight
// ends (succeeded, or failed with an error saying why) or, if the promotion
// lost its record (asynchronous replication), is gone (404): none is left
// queued, active or retrying.
func survivesFailover(t *testing.T, rd testkit.Backend, kill, promoted func()) {
	// 20 tokens 40 ms apart: each job runs about a second.
	apis, workers := fleet(t, rd, 2, 2, map[string]string{"CHATFLEET_SIM_TOKENS": "20", "CHATFLEET_SIM_TOKEN_DELAY": "40ms"})
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// 60 jobs over 60 sessions (all buckets' shards), submitted over 2 s, so
	// that the kill finds jobs queued, active and finished.
	const inFlight = 60
	ids := make([]string, inFlight)
	for i := range inFlight {
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprint("fo-", i), Message: fmt.Sprint("before ", i)})
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids[i] = sub.JobID
		time.Sleep(30 * time.Millisecond)
	}

	killed := time.Now()
	kill()
	promoted()
	promotedAfter := time.Since(killed)

	// New jobs succeed after the promotion (an API may answer 503 for the
	// first moments while its clients learn the new slot map: retried).
	var firstOK time.Duration
	for i := range 10 {
		var sub client.Submitted
		var err error
		for {
			if sub, err = c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprint("after-", i), Message: fmt.Sprint("after ", i)}); err == nil {
				break
			}
			if !client.IsStatus(err, http.StatusServiceUnavailable) || ctx.Err() != nil {
				t.Fatalf("submit after the promotion: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		j, err := c.Wait(ctx, sub.JobID)
		if err != nil || j.Status != "succeeded" {
			t.Fatalf("job %s after the promotion: %+v %v", sub.JobID, j, err)
		}
		if i == 0 {
			firstOK = time.Since(killed)
		}
	}

	// Every in-flight job ends or is gone; none stays unfinished.
	var mu sync.Mutex
	outcome := map[string]int{}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status := waitEnded(ctx, c, id)
			mu.Lock()
			outcome[status]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	for status, n := range outcome {
		if status != "succeeded" && status != "failed" && status != "gone" {
			t.Errorf("%d in-flight jobs left %s", n, status)
		}
	}
	for _, p := range append(apis, workers...) {
		if code, exited := p.Wait(0); exited {
			t.Errorf("a fleet process exited (%d) during the failover", code)
		}
	}
	t.Logf("master killed; replica promoted after %s; first new job succeeded %s after the kill; in-flight jobs: %v",
		promotedAfter.Round(10*time.Millisecond), firstOK.Round(10*time.Millisecond), outcome)
}

// waitEnded polls a job until it is finished or gone, for at most 90 s, and
// returns its last status ("gone" for a 404).
func waitEnded(ctx context.Context, c *client.Client, id string) string {
	deadline := time.Now().Add(90 * time.Second)
	status := "unknown"
	for time.Now().Before(deadline) && ctx.Err() == nil {
		j, err := c.Get(ctx, id)
		switch {
		case client.IsStatus(err, http.StatusNotFound):
			return "gone"
		case err == nil:
			status = j.Status
			if status == "succeeded" || status == "failed" || status == "canceled" {
				return status
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return status
}

// With each priority spread over 3 queues (CHATFLEET_QUEUE_SPREAD=3) on a
// 3-master cluster, jobs are given all three normal queues, each on its own
// master (a job's task goes there when it runs through asynq: a retry, a
// takeover), and the queue status reports every queue and the live worker.
func TestQueueSpreadOnCluster(t *testing.T) {
	cl := testkit.StartCluster(t)
	apis, _ := fleet(t, cl, 1, 1, map[string]string{"CHATFLEET_QUEUE_SPREAD": "3"})
	c := client.New(apis[0].URL())
	ctx := context.Background()
	given := map[string]int{} // jobs per queue
	for i := range 30 {
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprint("spread-", i), Message: "hi"})
		if err != nil {
			t.Fatal(err)
		}
		if j, err := c.Wait(ctx, sub.JobID); err != nil || j.Status != "succeeded" {
			t.Fatalf("job %s: %+v %v", sub.JobID, j, err)
		}
		q, err := cl.UniversalClient().HGet(ctx, rkeys.Job(sub.JobID), "queue").Result()
		if err != nil {
			t.Fatal(err)
		}
		given[q]++
	}
	masters := map[string]bool{}
	for q := range tasks.QueueSet(3) {
		if !strings.HasPrefix(q, tasks.QueueName(tasks.PriorityNormal)) {
			continue
		}
		if given[q] == 0 {
			t.Errorf("no job was given queue %s: %v", q, given)
		}
		masters[cl.MasterOf("asynq:{"+q+"}:pending").Addr()] = true
	}
	if len(masters) != 3 {
		t.Errorf("the 3 normal queues live on %d masters, want 3", len(masters))
	}
	// The status is a snapshot of up to 2 s ago: ask until it shows the
	// end of the run (no backlog, the worker live).
	var r response
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r = do(t, http.MethodGet, apis[0].URL()+"/health/queue/status", nil, nil)
		queues, _ := r.Body["queues"].([]any)
		workers, _ := r.Body["workers"].(map[string]any)
		if len(queues) == 9 && workers["live"] == float64(1) && r.Body["backlog"] == float64(0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue status: %s", r.Raw)
		}
	}
}
