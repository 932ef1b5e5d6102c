package e2e

import (
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// onEachBackend runs a test on a single Redis and on a Redis Cluster (3
// masters, 3 replicas), each started for it.
func onEachBackend(t *testing.T, test func(t *testing.T, rd testkit.Backend)) {
	t.Run("redis", func(t *testing.T) { test(t, testkit.StartRedis(t)) })
	t.Run("cluster", func(t *testing.T) { test(t, testkit.StartCluster(t)) })
}

// fleet starts nAPI API processes and nWorker worker processes on one Redis
// (or cluster).
func fleet(t *testing.T, rd testkit.Backend, nAPI, nWorker int, extra map[string]string) (apis, workers []*testkit.Proc) {
	t.Helper()
	env := fleetEnv(rd.URL(), extra)
	for i := range nWorker {
		workers = append(workers, testkit.StartProc(t, fmt.Sprintf("worker-%d", i), workerBin, env))
	}
	for i := range nAPI {
		apis = append(apis, testkit.StartProc(t, fmt.Sprintf("api-%d", i), apiBin, env))
	}
	// Runs before the processes stop: a dialed but unused keep-alive connection
	// would hold an API's graceful shutdown for 5 s.
	t.Cleanup(httpc.CloseIdleConnections)
	return apis, workers
}

// Two API and two worker processes: 8 sessions of 5 turns each, every session's
// turns submitted back to back through alternating API nodes without waiting for
// replies. Each history must be exactly the user/assistant pairs in
// submission order, each message once.
func TestFleetKeepsSessionOrderAcrossNodes(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		// A little simulated latency makes later turns reach a worker while earlier
		// ones are still running, which is what ordering has to survive.
		apis, _ := fleet(t, rd, 2, 2, map[string]string{"CHATFLEET_SIM_LATENCY": "15ms", "CHATFLEET_SIM_TOKENS": "3"})

		const sessions, turns = 8, 5
		ids := make([][]string, sessions)
		var wg sync.WaitGroup
		for s := range sessions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				session := fmt.Sprintf("order-%d", s)
				for turn := range turns {
					r := submit(t, apis[turn%2].URL(), session, fmt.Sprintf("session %d turn %d", s, turn), nil)
					if r.Status != http.StatusAccepted {
						t.Errorf("submit: %d %s", r.Status, r.Raw)
						return
					}
					ids[s] = append(ids[s], r.Body["job_id"].(string))
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}

		succeeded := 0
		for s := range sessions {
			for turn, id := range ids[s] {
				r := waitJob(t, apis[(turn+1)%2].URL(), id)
				if r.Body["status"] != "succeeded" {
					t.Errorf("job %s: %s", id, r.Raw)
					continue
				}
				succeeded++
			}
		}
		if succeeded != sessions*turns {
			t.Fatalf("%d of %d jobs succeeded", succeeded, sessions*turns)
		}

		for s := range sessions {
			session := fmt.Sprintf("order-%d", s)
			h := do(t, http.MethodGet, apis[s%2].URL()+"/api/v1/sessions/"+session+"/messages", nil, nil)
			msgs, _ := h.Body["messages"].([]any)
			if len(msgs) != 2*turns {
				t.Errorf("session %d: %d messages, want %d: %s", s, len(msgs), 2*turns, h.Raw)
				continue
			}
			for turn := range turns {
				want := fmt.Sprintf("session %d turn %d", s, turn)
				u, a := msgs[2*turn].(map[string]any), msgs[2*turn+1].(map[string]any)
				if u["role"] != "user" || u["content"] != want || u["job_id"] != ids[s][turn] {
					t.Errorf("session %d message %d: %v, want user %q", s, 2*turn, u, want)
				}
				if a["role"] != "assistant" || a["content"] != "echo: "+want+" lorem ipsum dolor" || a["job_id"] != ids[s][turn] {
					t.Errorf("session %d message %d: %v, want the reply to %q", s, 2*turn+1, a, want)
				}
			}
		}
	})
}
