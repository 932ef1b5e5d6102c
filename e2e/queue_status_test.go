package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// With the threshold at 5 and no worker, 6 jobs make queue status `warning`
// with advice to start workers; a worker brings it back to `ok`.
func TestQueueStatusWarnsAndRecovers(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 0, map[string]string{"CHATFLEET_QUEUE_ALERT_THRESHOLD": "5"})
	api := apis[0]
	for i := range 6 {
		if r := submit(t, api.URL(), fmt.Sprintf("backlog-%d", i), "wait", nil); r.Status != http.StatusAccepted {
			t.Fatalf("submit: %d %s", r.Status, r.Raw)
		}
	}
	var r response
	deadline := time.Now().Add(10 * time.Second)
	for {
		r = do(t, http.MethodGet, api.URL()+"/health/queue/status", nil, nil)
		if r.Body["status"] == "warning" || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r.Status != http.StatusOK || r.Body["status"] != "warning" || r.Body["backlog"] != float64(6) || r.Body["threshold"] != float64(5) {
		t.Fatalf("queue status with 6 waiting: %s", r.Raw)
	}
	if workers := r.Body["workers"].(map[string]any); workers["live"] != float64(0) {
		t.Fatalf("workers: %v", workers)
	}
	t.Logf("advice: %s", r.Body["advice"])
	if v := do(t, http.MethodGet, api.URL()+"/api/v1/health/queue/status", nil, nil); v.Body["status"] != "warning" {
		t.Fatalf("the /api/v1 alias disagrees: %s", v.Raw)
	}
	if got := metric(t, api.URL(), `chatfleet_queue_backlog{queue="chatfleet-normal"}`); got != 6 {
		t.Fatalf("chatfleet_queue_backlog = %v, want 6", got)
	}
	// They wait in the scheduler (no worker hands them out), all runnable.
	sched, _ := r.Body["scheduler"].(map[string]any)
	lanes, _ := sched["lanes"].([]any)
	models, _ := sched["models"].([]any)
	tenants, _ := sched["tenants"].([]any)
	if r.Body["runnable"] != float64(6) || len(lanes) != 3 || len(models) != 1 || len(tenants) != 1 {
		t.Fatalf("the scheduler's backlog: %s", r.Raw)
	}
	if l := lanes[1].(map[string]any); l["priority"] != "normal" || l["queued"] != float64(6) || l["runnable"] != float64(6) || l["oldest_age_seconds"].(float64) <= 0 {
		t.Fatalf("the normal lane: %v", l)
	}
	if got := metric(t, api.URL(), `chatfleet_queue_runnable{priority="normal"}`); got != 6 {
		t.Fatalf("chatfleet_queue_runnable = %v, want 6", got)
	}

	testkit.StartProc(t, "worker", workerBin, fleetEnv(rd.URL(), nil))
	deadline = time.Now().Add(20 * time.Second)
	for {
		r = do(t, http.MethodGet, api.URL()+"/health/queue/status", nil, nil)
		if r.Body["status"] == "ok" && r.Body["backlog"] == float64(0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue status after a worker started: %s", r.Raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	d := do(t, http.MethodGet, api.URL()+"/health/detailed", nil, nil)
	if d.Status != http.StatusOK || d.Body["status"] != "ok" || d.Body["redis"] == nil || d.Body["breakers"] == nil || d.Body["workers"] == nil {
		t.Fatalf("detailed: %d %s", d.Status, d.Raw)
	}
	// Without a models file: the variables' one deployment, named by its
	// kind, its model the configured one.
	deps, _ := d.Body["deployments"].([]any)
	if len(deps) != 1 {
		t.Fatalf("detailed deployments: %s", d.Raw)
	}
	if dep, _ := deps[0].(map[string]any); dep["id"] != "sim" || dep["model"] != "sim" || dep["provider"] != "sim" || dep["breaker"] != "closed" || dep["limited"] != false {
		t.Fatalf("the variables' deployment: %v", dep)
	}
}
