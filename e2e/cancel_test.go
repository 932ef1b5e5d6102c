package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

func waitStatus(t *testing.T, c *client.Client, id, status string) client.Job {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		j, err := c.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status == status {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s, never %s", id, j.Status, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An active job whose provider has not answered yet: cancel aborts the
// provider call (its context) within a second, plus however late the machine
// itself ran meanwhile; the stream ends with `canceled`, and the job is not
// retried.
func TestCancelActiveJobAbortsTheProviderCall(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		apis, workers := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_SIM_LATENCY": "30s"})
		c := client.New(apis[0].URL())
		ctx := context.Background()
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "cancel-active", Message: "slow"})
		if err != nil {
			t.Fatal(err)
		}
		waitStatus(t, c, sub.JobID, "active")

		streamEnd := make(chan client.Event, 1)
		go func() {
			var last client.Event
			_ = c.Stream(ctx, sub.JobID, client.StreamOptions{}, func(ev client.Event) error { last = ev; return nil })
			streamEnd <- last
		}()
		time.Sleep(100 * time.Millisecond) // the stream is open and idle

		start := time.Now()
		lag := machineLag()
		j, err := c.Cancel(ctx, sub.JobID)
		if err != nil || j.Status != "canceled" {
			t.Fatalf("cancel: %+v %v", j, err)
		}
		select {
		case ev := <-streamEnd:
			if ev.Type != "canceled" {
				t.Fatalf("stream ended with %+v", ev)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no canceled event within 10s")
		}
		// The worker's provider call returns because its context was canceled.
		for !strings.Contains(strings.Join(workers[0].Logs(), "\n"), `"job canceled; provider call aborted"`) {
			if time.Since(start) > 10*time.Second {
				t.Fatal("the provider call was not aborted within 10s of the cancel")
			}
			time.Sleep(10 * time.Millisecond)
		}
		took, noise := time.Since(start), lag()
		t.Logf("provider call aborted %s after the cancel (the machine ran up to %s late)", took, noise)
		if took > time.Second+noise {
			t.Fatalf("the provider call was aborted %s after the cancel, want within 1s (+%s the machine ran late)", took, noise)
		}

		time.Sleep(1500 * time.Millisecond) // long enough for a retry to have started
		j, err = c.Get(ctx, sub.JobID)
		if err != nil || j.Status != "canceled" || j.Attempts != 1 {
			t.Fatalf("after cancel: %+v %v", j, err)
		}
		if _, err := c.Cancel(ctx, sub.JobID); !client.IsStatus(err, http.StatusConflict) {
			t.Fatalf("second cancel: %v, want 409", err)
		}
	})
}

// A job canceled mid-reply keeps its partial output in the log: a replay
// shows the tokens, then `canceled`.
func TestCancelKeepsPartialOutput(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_SIM_TOKENS": "200", "CHATFLEET_SIM_TOKEN_DELAY": "20ms"})
	c := client.New(apis[0].URL())
	ctx := context.Background()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "cancel-partial", Message: "long"})
	if err != nil {
		t.Fatal(err)
	}
	tokens := 0
	_ = c.Stream(ctx, sub.JobID, client.StreamOptions{}, func(ev client.Event) error {
		if ev.Type == "token" {
			tokens++
			if tokens == 3 {
				if _, err := c.Cancel(ctx, sub.JobID); err != nil {
					t.Errorf("cancel: %v", err)
				}
			}
		}
		return nil
	})
	replay := &streamed{}
	if err := c.Stream(ctx, sub.JobID, client.StreamOptions{}, replay.add); err != nil {
		t.Fatal(err)
	}
	last := replay.events[len(replay.events)-1]
	if last.Type != "canceled" || len(replay.events) < 4 || !strings.HasPrefix(replay.text.String(), "echo: long") {
		t.Fatalf("replay: %d events, last %+v, text %q", len(replay.events), last, replay.text.String())
	}
	for i, ev := range replay.events {
		if ev.Seq != int64(i+1) {
			t.Fatalf("replay ids not contiguous at %d: %d", i, ev.Seq)
		}
	}
}

// A queued job that is canceled never runs, even when a worker arrives later;
// a finished job cannot be canceled.
func TestCancelQueuedAndFinished(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		apis, _ := fleet(t, rd, 1, 0, nil)
		c := client.New(apis[0].URL())
		ctx := context.Background()
		queued, err := c.Submit(ctx, client.SubmitRequest{SessionID: "cancel-queued", Message: "never"})
		if err != nil {
			t.Fatal(err)
		}
		if j, err := c.Cancel(ctx, queued.JobID); err != nil || j.Status != "canceled" {
			t.Fatalf("cancel queued: %+v %v", j, err)
		}
		next, err := c.Submit(ctx, client.SubmitRequest{SessionID: "cancel-queued", Message: "after"})
		if err != nil {
			t.Fatal(err)
		}
		testkit.StartProc(t, "worker-late", workerBin, fleetEnv(rd.URL(), nil))
		done, err := c.Wait(ctx, next.JobID)
		if err != nil || done.Status != "succeeded" {
			t.Fatalf("the next job of the session: %+v %v", done, err)
		}
		j, err := c.Get(ctx, queued.JobID)
		if err != nil || j.Status != "canceled" || j.Attempts != 0 {
			t.Fatalf("canceled job ran: %+v %v", j, err)
		}
		h, err := c.History(ctx, "cancel-queued")
		if err != nil || len(h) != 2 || h[0].Content != "after" {
			t.Fatalf("history: %+v %v", h, err)
		}
		if _, err := c.Cancel(ctx, next.JobID); !client.IsStatus(err, http.StatusConflict) {
			t.Fatalf("cancel finished: %v, want 409", err)
		}
	})
}
