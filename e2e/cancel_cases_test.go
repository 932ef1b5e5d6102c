package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// callsFor counts the upstream requests whose last message is msg.
func callsFor(fake *llmfake.Fake, msg string) int {
	n := 0
	for _, req := range fake.Requests() {
		if len(req) > 0 && req[len(req)-1].Content == msg {
			n++
		}
	}
	return n
}

// sentAnywhere reports whether msg appears in any message of any upstream
// request (as the last turn or as history).
func sentAnywhere(fake *llmfake.Fake, msg string) bool {
	for _, req := range fake.Requests() {
		for _, m := range req {
			if strings.Contains(m.Content, msg) {
				return true
			}
		}
	}
	return false
}

// A job waiting for its retry (the upstream answered 503 with a Retry-After)
// is canceled: 200 with status canceled, and the retry never reaches the
// upstream. A second job failing the same way and left alone shows that the
// wait was long enough for the retry to have come.
func TestCancelRetryingJob(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		const retryAfter = 4 * time.Second
		fake := llmfake.NewOpenAI(t)
		fake.Always(llmfake.Step{Status: http.StatusServiceUnavailable, Message: "overloaded", RetryAfter: "4"})
		// The breaker stays closed so that every attempt reaches the upstream.
		apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{"CHATFLEET_BREAKER_FAILURES": "100"}))
		c := client.New(apis[0].URL())
		ctx := context.Background()

		victim, err := c.Submit(ctx, client.SubmitRequest{SessionID: "cancel-retrying", Message: "cancel me"})
		if err != nil {
			t.Fatal(err)
		}
		control, err := c.Submit(ctx, client.SubmitRequest{SessionID: "cancel-retrying-control", Message: "leave me"})
		if err != nil {
			t.Fatal(err)
		}
		j := waitStatus(t, c, victim.JobID, "retrying")
		// The last attempt's error, as a single upstream's 503 reads.
		if j.Error == nil || (j.Error.Code != "provider_error" && j.Error.Code != "providers_unavailable") {
			t.Fatalf("retrying job's error: %+v, want provider_error or providers_unavailable", j.Error)
		}
		waitStatus(t, c, control.JobID, "retrying")
		before := callsFor(fake, "cancel me")
		if before != 1 {
			t.Fatalf("the upstream got %d calls of the job before the cancel, want 1", before)
		}

		canceledAt := time.Now()
		j, err = c.Cancel(ctx, victim.JobID)
		if err != nil || j.Status != "canceled" {
			t.Fatalf("cancel retrying: %+v %v", j, err)
		}
		// The job left alone is retried after the Retry-After: by then the
		// canceled one would have been too.
		for callsFor(fake, "leave me") < 2 {
			if time.Since(canceledAt) > 3*retryAfter {
				t.Fatalf("the control job was not retried within %s (calls: %d)", 3*retryAfter, callsFor(fake, "leave me"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		// And past the whole delay once more, with room for a slow worker.
		time.Sleep(retryAfter)
		if n := callsFor(fake, "cancel me"); n != before {
			t.Fatalf("the upstream got %d calls of the canceled job, %d after the cancel", n, n-before)
		}
		j, err = c.Get(ctx, victim.JobID)
		if err != nil || j.Status != "canceled" || j.Attempts != 1 || j.Error == nil || j.Error.Code != "canceled" {
			t.Fatalf("canceled job afterwards: %+v %v", j, err)
		}
		if _, err := c.Cancel(ctx, victim.JobID); !client.IsStatus(err, http.StatusConflict) {
			t.Fatalf("second cancel: %v, want 409", err)
		}
		// Its log ends with the cancel.
		var last client.Event
		if err := c.Stream(ctx, victim.JobID, client.StreamOptions{}, func(ev client.Event) error { last = ev; return nil }); err != nil {
			t.Fatal(err)
		}
		if last.Type != "canceled" {
			t.Fatalf("the canceled job's log ends with %+v", last)
		}
	})
}

// A session's second turn waits behind its slow first turn and is canceled
// there: it reads canceled, the first turn still succeeds, a third turn runs
// after the first, and the second turn never reaches the upstream nor the
// session's history.
func TestCancelLaterTurnWaitingInItsSession(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		fake := llmfake.NewOpenAI(t)
		fake.SetPlan(func(call int) llmfake.Step {
			if call == 1 {
				return llmfake.Step{FirstByteDelay: 3 * time.Second} // the first turn is slow
			}
			return llmfake.Step{}
		})
		// Two workers: a free slot for the second turn, were it not held back.
		apis, _ := fleet(t, rd, 1, 2, providerEnv(fake, nil))
		c := client.New(apis[0].URL())
		// Bounded: a canceled turn left at the head of its session's order
		// holds the later turns forever.
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		const session = "cancel-later-turn"

		first, err := c.Submit(ctx, client.SubmitRequest{SessionID: session, Message: "turn one"})
		if err != nil {
			t.Fatal(err)
		}
		waitStatus(t, c, first.JobID, "active")
		second, err := c.Submit(ctx, client.SubmitRequest{SessionID: session, Message: "turn two"})
		if err != nil {
			t.Fatal(err)
		}
		if j, err := c.Get(ctx, second.JobID); err != nil || j.Status != "queued" {
			t.Fatalf("second turn behind the first: %+v %v", j, err)
		}
		j, err := c.Cancel(ctx, second.JobID)
		if err != nil || j.Status != "canceled" {
			t.Fatalf("cancel the waiting turn: %+v %v", j, err)
		}
		if j, err := c.Get(ctx, first.JobID); err != nil || j.Status != "active" {
			t.Fatalf("the first turn is no longer running at the cancel (the case is not the one meant): %+v %v", j, err)
		}

		done, err := c.Wait(ctx, first.JobID)
		if err != nil || done.Status != "succeeded" || done.Result == nil || done.Result.Content != llmfake.Reply("turn one") {
			t.Fatalf("first turn: %+v %v", done, err)
		}
		// A third turn runs after the first; had the second run, it would
		// have run before the third.
		third, err := c.Submit(ctx, client.SubmitRequest{SessionID: session, Message: "turn three"})
		if err != nil {
			t.Fatal(err)
		}
		done, err = c.Wait(ctx, third.JobID)
		if err != nil || done.Status != "succeeded" {
			t.Fatalf("third turn, after the first ended: %+v %v", done, err)
		}

		if sentAnywhere(fake, "turn two") {
			t.Fatalf("the canceled turn reached the upstream: %+v", fake.Requests())
		}
		j, err = c.Get(ctx, second.JobID)
		if err != nil || j.Status != "canceled" || j.Attempts != 0 || j.StartedAt != nil {
			t.Fatalf("canceled turn afterwards: %+v %v", j, err)
		}
		h, err := c.History(ctx, session)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range h {
			got = append(got, m.Role+":"+m.Content)
			if m.JobID == second.JobID {
				t.Errorf("history holds a message of the canceled turn: %+v", m)
			}
		}
		want := []string{"user:turn one", "assistant:" + llmfake.Reply("turn one"), "user:turn three", "assistant:" + llmfake.Reply("turn three")}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("history:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// The third turn's request carried the history without the second.
		reqs := fake.Requests()
		var roles []string
		for _, m := range reqs[len(reqs)-1] {
			if m.Role != "system" {
				roles = append(roles, m.Role+":"+m.Content)
			}
		}
		if strings.Join(roles, "\n") != strings.Join(want[:3], "\n") {
			t.Fatalf("the third turn's upstream request:\n%s\nwant:\n%s", strings.Join(roles, "\n"), strings.Join(want[:3], "\n"))
		}
	})
}

// A job followed on one API node is canceled through another: the follower
// gets `canceled` and its stream ends, and both nodes read the job canceled.
func TestCancelOnAnotherAPINode(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		apis, _ := fleet(t, rd, 2, 1, map[string]string{"CHATFLEET_SIM_LATENCY": "30s"})
		c0, c1 := client.New(apis[0].URL()), client.New(apis[1].URL())
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		sub, err := c0.Submit(ctx, client.SubmitRequest{SessionID: "cancel-cross-node", Message: "slow"})
		if err != nil {
			t.Fatal(err)
		}
		waitStatus(t, c0, sub.JobID, "active")

		type end struct {
			events []client.Event
			err    error
		}
		ended := make(chan end, 1)
		go func() {
			var evs []client.Event
			err := c0.Stream(ctx, sub.JobID, client.StreamOptions{}, func(ev client.Event) error { evs = append(evs, ev); return nil })
			ended <- end{evs, err}
		}()
		// The follower is connected to apis[0] before the cancel, so the
		// event has to travel from apis[1] to it live.
		waitUntil(t, 10*time.Second, "the stream open on apis[0]", func() bool {
			return metric(t, apis[0].URL(), "chatfleet_stream_clients") == 1
		})
		time.Sleep(200 * time.Millisecond) // past the stream's replay of the (empty) log

		canceledAt := time.Now()
		j, err := c1.Cancel(ctx, sub.JobID)
		if err != nil || j.Status != "canceled" {
			t.Fatalf("cancel via apis[1]: %+v %v", j, err)
		}
		select {
		case e := <-ended:
			if e.err != nil {
				t.Fatalf("stream on apis[0]: %v", e.err)
			}
			if len(e.events) == 0 || e.events[len(e.events)-1].Type != "canceled" {
				t.Fatalf("stream on apis[0] ended with %+v, want a final canceled", e.events)
			}
			t.Logf("the follower on apis[0] got canceled %s after the cancel on apis[1]", time.Since(canceledAt).Round(100*time.Microsecond))
		case <-time.After(10 * time.Second):
			t.Fatal("the follower on apis[0] got no canceled event within 10s of the cancel on apis[1]")
		}
		for i, c := range []*client.Client{c0, c1} {
			j, err := c.Get(ctx, sub.JobID)
			if err != nil || j.Status != "canceled" {
				t.Fatalf("job on apis[%d]: %+v %v", i, j, err)
			}
		}
	})
}
