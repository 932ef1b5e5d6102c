package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// On a 3-master Redis Cluster the scheduler keeps tenants apart as on one
// Redis: beta's 4 jobs, submitted behind acme's 48 on a worker of 8 slots
// and half-second replies, take the next free slots (half of the 8, its
// share), not the end of acme's backlog (first come, first served: 6 rounds,
// 3 s).
func TestSchedulerIsFairOnACluster(t *testing.T) {
	cl := testkit.StartCluster(t)
	apis, _ := fleet(t, cl, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(),
		"CHATFLEET_WORKER_CONCURRENCY": "8", "CHATFLEET_SIM_LATENCY": "500ms"})
	acme := client.New(apis[0].URL(), client.WithAPIKey(keyAcme))
	beta := client.New(apis[0].URL(), client.WithAPIKey(keyBeta))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// burst submits n jobs of a tenant at once and returns when the last one
	// ended, measured from the first submit.
	burst := func(c *client.Client, name string, n int) (ids []string, submitted time.Time) {
		t.Helper()
		submitted = time.Now()
		ids = make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("%s-%d-%d", name, submitted.UnixNano(), i), Message: "hi"})
				if err != nil {
					t.Error(err)
					return
				}
				ids[i] = sub.JobID
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		return ids, submitted
	}
	lastEnd := func(c *client.Client, ids []string) time.Time {
		t.Helper()
		var last time.Time
		for _, id := range ids {
			j, err := c.Wait(ctx, id)
			if err != nil || j.Status != "succeeded" || j.FinishedAt == nil {
				t.Fatalf("job %s: %+v %v", id, j, err)
			}
			last = maxTime(last, *j.FinishedAt)
		}
		return last
	}

	ids, at := burst(beta, "alone", 4)
	alone := lastEnd(beta, ids).Sub(at)

	acmeIDs, _ := burst(acme, "backlog", 48)
	time.Sleep(100 * time.Millisecond) // acme's first 8 run
	ids, at = burst(beta, "behind", 4)
	behind := lastEnd(beta, ids).Sub(at)
	lastEnd(acme, acmeIDs)
	const job = 500 * time.Millisecond
	t.Logf("beta's 4 jobs: %s alone, %s behind acme's 48 (bound %s)", alone, behind, alone+job+300*time.Millisecond)
	// At most one round of acme's running jobs before them, and 300 ms for a
	// loaded 2-core machine.
	if behind > alone+job+300*time.Millisecond {
		t.Errorf("beta's 4 jobs took %s behind acme's backlog, %s alone: they waited for the backlog", behind, alone)
	}
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
