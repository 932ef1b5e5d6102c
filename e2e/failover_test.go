package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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
	queue := tasks.QueueName(tasks.PriorityNormal)
	victim := cl.MasterOf("asynq:{" + queue + "}:pending")
	// The fence key shares the queue's slot, so the victim itself takes it.
	synced := func() { replicated(t, victim.Client(), "e2e-failover-fence:{"+queue+"}") }
	survivesFailover(t, cl, synced, victim.Kill, func() { cl.WaitHealthy(30 * time.Second) })
}

// The master behind a Sentinel (one replica, one Sentinel with quorum 1) is
// SIGKILLed while jobs run.
func TestSentinelFailover(t *testing.T) {
	s := testkit.StartSentinel(t)
	synced := func() { replicated(t, s.Master.Client(), "e2e-failover-fence") }
	survivesFailover(t, s, synced, s.Master.Kill, func() { s.WaitPromoted(30 * time.Second) })
}

// replicated writes key on a master and waits until its replica has
// acknowledged the write (WAIT 1, on the connection that wrote: WAIT counts
// that connection's writes). Replication is one ordered stream, so the
// replica then holds everything the master took before the key.
func replicated(t *testing.T, master *redis.Client, key string) {
	t.Helper()
	ctx := context.Background()
	conn := master.Conn()
	defer conn.Close()
	if err := conn.Set(ctx, key, time.Now().UnixNano(), time.Minute).Err(); err != nil {
		t.Fatalf("write the fence on %s: %v", master.Options().Addr, err)
	}
	acked, err := conn.Wait(ctx, 1, 10*time.Second).Result()
	if err != nil || acked < 1 {
		t.Fatalf("WAIT 1 on %s: %d replicas acknowledged, %v", master.Options().Addr, acked, err)
	}
}

// failoverCodes are the error codes of a job that the failover itself ended
// (docs/capacity.md, "What a failover loses"; docs/providers.md): the
// reconciler fails a job whose task was lost with no payload to enqueue it
// again (`lost`), or one whose task asynq archived (`failed`).
var failoverCodes = map[string]bool{"lost": true, "failed": true}

// survivesFailover runs jobs on rd, waits until the replica has every write
// of their submission (synced), calls kill while they run and promoted until
// the replica has taken over. The fleet goes on without restarts; jobs
// submitted after the promotion succeed; and every job submitted before the
// kill ends succeeded, or failed with an error code the docs give for a
// failover. Since their submission reached the replica, none may be lost:
// gone (404), canceled or left unfinished is a failure. Writes after the
// sync (their attempts, results) may be lost; the fleet must run or end
// those jobs again.
func survivesFailover(t *testing.T, rd testkit.Backend, synced, kill, promoted func()) {
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

	// What the kill is to find: jobs still unfinished (else the test
	// proves nothing about them).
	atKill := map[string]int{}
	for _, id := range ids {
		j, err := c.Get(ctx, id)
		if err != nil {
			t.Fatalf("job %s before the kill: %v", id, err)
		}
		atKill[j.Status]++
	}
	if atKill["succeeded"] == inFlight {
		t.Fatalf("every job had finished before the kill: %v", atKill)
	}

	synced()
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

	// Every job submitted before the kill ends, succeeded or failed for the
	// failover; none is lost or left unfinished.
	var mu sync.Mutex
	outcome := map[string]int{}
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, j := waitEnded(ctx, c, id)
			key := status
			switch {
			case status == "succeeded":
			case status == "failed" && j.Error != nil && failoverCodes[j.Error.Code]:
				key += ":" + j.Error.Code
			case status == "failed":
				t.Errorf("job %s failed with %+v, want an error code of %v", id, j.Error, failoverCodes)
			case status == "gone":
				t.Errorf("job %s, submitted and replicated before the kill, is gone (404)", id)
			default:
				t.Errorf("job %s submitted before the kill is %s: %+v", id, status, j)
			}
			mu.Lock()
			outcome[key]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, p := range append(apis, workers...) {
		if code, exited := p.Wait(0); exited {
			t.Errorf("a fleet process exited (%d) during the failover", code)
		}
	}
	t.Logf("master killed; replica promoted after %s; first new job succeeded %s after the kill; jobs submitted before the kill: %v just before it, %v in the end",
		promotedAfter.Round(10*time.Millisecond), firstOK.Round(10*time.Millisecond), atKill, outcome)
}

// waitEnded polls a job until it is finished or gone, for at most 90 s, and
// returns its last status ("gone" for a 404) and the job as last read.
func waitEnded(ctx context.Context, c *client.Client, id string) (string, client.Job) {
	deadline := time.Now().Add(90 * time.Second)
	status := "unknown"
	var last client.Job
	for time.Now().Before(deadline) && ctx.Err() == nil {
		j, err := c.Get(ctx, id)
		switch {
		case client.IsStatus(err, http.StatusNotFound):
			return "gone", last
		case err == nil:
			status, last = j.Status, j
			if j.Finished() {
				return status, last
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return status, last
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
