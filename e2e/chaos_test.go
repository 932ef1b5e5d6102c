package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// 30 jobs over 2 workers while one worker is SIGKILLed mid-stream and Redis
// (with AOF) is restarted: every job succeeds, every history holds each
// message and reply exactly once and in order, and a job that lost its worker
// after streaming tells its followers `retry`. The dead worker's jobs are
// taken over once their lease (CHATFLEET_JOB_LEASE, 5 s) expires: all is done
// within seconds of the restart, with no worker restarted.
func TestWorkerKillAndRedisRestartLoseNothing(t *testing.T) {
	rd := testkit.StartRedis(t, testkit.WithAOF())
	extra := map[string]string{"CHATFLEET_SIM_TOKENS": "12", "CHATFLEET_SIM_TOKEN_DELAY": "60ms"}
	apis, workers := fleet(t, rd, 1, 2, extra)
	c := client.New(apis[0].URL())
	ctx := context.Background()

	const sessions, turns = 15, 2
	ids := make([][]string, sessions)
	for turn := range turns {
		for s := range sessions {
			sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("chaos-%d", s), Message: fmt.Sprintf("s%d t%d", s, turn)})
			if err != nil {
				t.Fatal(err)
			}
			ids[s] = append(ids[s], sub.JobID)
		}
	}
	time.Sleep(300 * time.Millisecond) // the jobs that started are mid-stream
	// The victim is the worker running the most jobs now: which worker the
	// first jobs went to is the scheduler's and asynq's choice.
	var victim *testkit.Proc
	for deadline := time.Now().Add(5 * time.Second); victim == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		most := 0.0
		for _, w := range workers {
			if n := metric(t, w.URL(), "chatfleet_active_jobs"); n > most {
				victim, most = w, n
			}
		}
	}
	if victim == nil {
		t.Fatal("no worker ran a job within 5 s")
	}
	victim.Signal(syscall.SIGKILL)
	killedAt := time.Now()
	if _, ok := victim.Wait(5 * time.Second); !ok {
		t.Fatal("the killed worker did not exit")
	}
	rd.Restart()
	restartedAt := time.Now()
	t.Logf("worker killed and Redis restarted in %s", restartedAt.Sub(killedAt))

	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	retried := 0
	for s := range sessions {
		for turn, id := range ids[s] {
			j, err := c.Wait(wctx, id)
			if err != nil {
				t.Fatalf("job %s: %v", id, err)
			}
			want := fmt.Sprintf("echo: s%d t%d", s, turn)
			if j.Status != "succeeded" || len(j.Result.Content) < len(want) || j.Result.Content[:len(want)] != want {
				t.Fatalf("job %s: %+v %+v", id, j, j.Result)
			}
			if j.Attempts > 1 {
				retried++
				var sawRetry bool
				_ = c.Stream(wctx, id, client.StreamOptions{}, func(ev client.Event) error {
					sawRetry = sawRetry || ev.Type == "retry"
					return nil
				})
				if !sawRetry {
					t.Errorf("job %s ran %d times but its stream never said retry", id, j.Attempts)
				}
			}
		}
	}
	if retried == 0 {
		t.Fatal("no job was interrupted: the kill did not hit a running job")
	}
	allDone := time.Since(restartedAt)
	t.Logf("%d jobs were interrupted and completed by another attempt; every job done %s after the restart", retried, allDone.Round(time.Millisecond))
	if allDone > 20*time.Second {
		t.Errorf("the jobs took %s after the restart: the dead worker's jobs were not taken over within their lease", allDone)
	}
	for s := range sessions {
		h, err := c.History(ctx, fmt.Sprintf("chaos-%d", s))
		if err != nil {
			t.Fatal(err)
		}
		if len(h) != 2*turns {
			t.Fatalf("session %d history has %d messages, want %d: %+v", s, len(h), 2*turns, h)
		}
		for turn := range turns {
			u, a := h[2*turn], h[2*turn+1]
			if u.Role != "user" || u.Content != fmt.Sprintf("s%d t%d", s, turn) || u.JobID != ids[s][turn] || a.Role != "assistant" || a.JobID != ids[s][turn] {
				t.Fatalf("session %d turn %d: %+v %+v", s, turn, u, a)
			}
		}
	}
}
