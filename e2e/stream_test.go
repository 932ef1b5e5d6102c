package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// streamed is what one Stream call saw.
type streamed struct {
	events []client.Event
	text   strings.Builder
	done   int
}

func (s *streamed) add(ev client.Event) error {
	s.events = append(s.events, ev)
	switch ev.Type {
	case "token":
		s.text.WriteString(ev.Delta)
	case "retry":
		s.text.Reset()
	case "done":
		s.done++
	}
	return nil
}

// check verifies ids contiguous from first, one final done, deltas = result.
func (s *streamed) check(t *testing.T, first int64) {
	t.Helper()
	for i, ev := range s.events {
		if ev.Seq != first+int64(i) {
			t.Fatalf("event %d has id %d, want %d (ids must be contiguous)", i, ev.Seq, first+int64(i))
		}
	}
	last := s.events[len(s.events)-1]
	if s.done != 1 || last.Type != "done" || last.Result == nil {
		t.Fatalf("want exactly one done, last: %d done, last event %+v", s.done, last)
	}
	if got := s.text.String(); got != last.Result.Content {
		t.Fatalf("deltas concatenate to %q, result is %q", got, last.Result.Content)
	}
}

// 2 API + 2 worker processes, 40 concurrent jobs with 40-word replies, each
// followed from the API node it was not submitted to.
func TestStreamsAcrossNodesAreExact(t *testing.T) {
	onEachBackend(t, func(t *testing.T, rd testkit.Backend) {
		// "echo: job N" is 3 words; 37 filler words make 40.
		apis, _ := fleet(t, rd, 2, 2, map[string]string{"CHATFLEET_SIM_TOKENS": "37", "CHATFLEET_SIM_TOKEN_DELAY": "2ms"})
		clients := []*client.Client{client.New(apis[0].URL()), client.New(apis[1].URL())}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()

		const jobs = 40
		var wg sync.WaitGroup
		results := make([]*streamed, jobs)
		errs := make(chan error, jobs)
		for i := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sub, err := clients[i%2].Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("stream-%d", i), Message: fmt.Sprintf("job %d", i)})
				if err != nil {
					errs <- err
					return
				}
				s := &streamed{}
				if err := clients[(i+1)%2].Stream(ctx, sub.JobID, client.StreamOptions{}, s.add); err != nil {
					errs <- err
					return
				}
				results[i] = s
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for i, s := range results {
			s.check(t, 1)
			if want := 40; len(strings.Fields(s.text.String())) != want {
				t.Fatalf("job %d: %d words, want %d", i, len(strings.Fields(s.text.String())), want)
			}
		}
	})
}

// A stream opened after the job finished replays it whole; a stream cut after
// event k and reopened on the other node with Last-Event-ID k continues at k+1.
func TestLateStreamReplaysAndResumeContinues(t *testing.T) {
	rd := testkit.StartRedis(t)
	// Short batches, so that the stream can be cut mid-reply.
	apis, _ := fleet(t, rd, 2, 1, map[string]string{"CHATFLEET_SIM_TOKENS": "20", "CHATFLEET_SIM_TOKEN_DELAY": "30ms", "CHATFLEET_STREAM_FLUSH_INTERVAL": "20ms"})
	a, b := client.New(apis[0].URL()), client.New(apis[1].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	sub, err := a.Submit(ctx, client.SubmitRequest{SessionID: "resume", Message: "cut me"})
	if err != nil {
		t.Fatal(err)
	}
	// Cut the live stream after k events.
	const k = 4
	first := &streamed{}
	errCut := errors.New("cut")
	err = a.Stream(ctx, sub.JobID, client.StreamOptions{}, func(ev client.Event) error {
		_ = first.add(ev)
		if len(first.events) == k {
			return errCut
		}
		return nil
	})
	if !errors.Is(err, errCut) || len(first.events) != k {
		t.Fatalf("cut: %v after %d events", err, len(first.events))
	}
	// Resume on the other node while the job is still running.
	rest := &streamed{}
	if err := b.Stream(ctx, sub.JobID, client.StreamOptions{After: k}, rest.add); err != nil {
		t.Fatal(err)
	}
	if rest.events[0].Seq != k+1 {
		t.Fatalf("resume started at %d, want %d", rest.events[0].Seq, k+1)
	}
	whole := &streamed{}
	for _, ev := range append(first.events, rest.events...) {
		_ = whole.add(ev)
	}
	whole.check(t, 1)

	// After the job finished: a late stream replays every event, identical.
	late := &streamed{}
	if err := b.Stream(ctx, sub.JobID, client.StreamOptions{}, late.add); err != nil {
		t.Fatal(err)
	}
	late.check(t, 1)
	if len(late.events) != len(whole.events) || late.text.String() != whole.text.String() {
		t.Fatalf("late replay differs: %d events %q, live %d events %q", len(late.events), late.text.String(), len(whole.events), whole.text.String())
	}
}

// The API node a client streams from is stopped mid-stream and started again
// on the same address: the client resumes by itself, missing and doubling nothing.
func TestClientResumesAfterTheNodeRestarts(t *testing.T) {
	rd := testkit.StartRedis(t)
	extra := map[string]string{"CHATFLEET_SIM_TOKENS": "30", "CHATFLEET_SIM_TOKEN_DELAY": "40ms"}
	fleet(t, rd, 0, 1, extra)
	addr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	env := fleetEnv(rd.URL(), map[string]string{"CHATFLEET_HTTP_ADDR": addr})
	node := testkit.StartProc(t, "api-first", apiBin, env)
	c := client.New(node.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "restart", Message: "keep going"})
	if err != nil {
		t.Fatal(err)
	}
	got := &streamed{}
	reconnects := 0
	restarted := false
	relaunch := make(chan error, 1)
	err = c.Stream(ctx, sub.JobID, client.StreamOptions{OnReconnect: func(error, int64) { reconnects++ }}, func(ev client.Event) error {
		_ = got.add(ev)
		if ev.Seq == 5 && !restarted {
			restarted = true
			go func() {
				node.Signal(syscall.SIGTERM) // the node ends its streams and exits
				node.Wait(10 * time.Second)
				_, err := testkit.Launch(t, "api-second", apiBin, env)
				relaunch <- err
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-relaunch; err != nil {
		t.Fatal(err)
	}
	got.check(t, 1)
	if reconnects == 0 {
		t.Fatal("the stream never reconnected; the node restart was not exercised")
	}
}

// Nobody follows the job at first, so its worker holds the deltas back (for
// an hour here); a stream opened mid-reply gets the first token from the
// log, then, as its API tells the worker, what was held back and the rest
// live, batch by batch. Without the wake-up the held text would only come
// with the final event.
func TestAFollowerMidReplyGetsTheRestLive(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{
		"CHATFLEET_SIM_TOKENS": "40", "CHATFLEET_SIM_TOKEN_DELAY": "50ms",
		"CHATFLEET_STREAM_UNFOLLOWED_FLUSH_INTERVAL": "1h", "CHATFLEET_STREAM_FLUSH_INTERVAL": "100ms",
	})
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "late", Message: "hold it"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		j, err := c.Get(ctx, sub.JobID)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status == "active" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // some deltas are held back
	s := &streamed{}
	if err := c.Stream(ctx, sub.JobID, client.StreamOptions{}, s.add); err != nil {
		t.Fatal(err)
	}
	s.check(t, 1)
	if tokens := len(s.events) - 1; tokens < 5 {
		t.Fatalf("%d token events before done: the rest of the reply did not come live", tokens)
	}
	t.Logf("%d events: %d words in the first batch after the log's first token", len(s.events), len(strings.Fields(s.events[1].Delta)))
}
