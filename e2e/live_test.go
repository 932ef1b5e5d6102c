package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// A followed job's tokens go out live ahead of its log, which its worker
// writes only now and then (here: once an hour). A client that resumes
// mid-reply after an event that the log does not hold yet, on the API node
// where another client follows the job (so no first subscription there
// wakes the worker), gets every event after it once and in order, before
// the job's end: the same events as the follower that stayed. The replay
// after the end is the same again.
func TestAResumeMidReplyWhileTheLogIsBehind(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 2, 1, map[string]string{
		"CHATFLEET_SIM_TOKENS": "40", "CHATFLEET_SIM_TOKEN_DELAY": "50ms",
		"CHATFLEET_STREAM_UNFOLLOWED_FLUSH_INTERVAL": "1h",
	})
	a, b := client.New(apis[0].URL()), client.New(apis[1].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := a.Submit(ctx, client.SubmitRequest{SessionID: "ahead", Message: "resume me"})
	if err != nil {
		t.Fatal(err)
	}

	stayed := &streamed{}
	var mu sync.Mutex
	seen := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- a.Stream(ctx, sub.JobID, client.StreamOptions{}, func(ev client.Event) error {
			mu.Lock()
			defer mu.Unlock()
			_ = stayed.add(ev)
			if len(stayed.events) == 12 {
				close(seen)
			}
			return nil
		})
	}()
	select {
	case <-seen:
	case <-ctx.Done():
		t.Fatal("the follower got fewer than 12 events")
	}
	mu.Lock()
	got := stayed.events[len(stayed.events)-1].Seq
	mu.Unlock()
	logged, err := rd.Client().LLen(ctx, rkeys.Events(sub.JobID)).Result()
	if err != nil {
		t.Fatal(err)
	}
	const k = 6
	if logged >= k {
		t.Fatalf("the log holds %d events while the follower has %d: nothing was held back", logged, got)
	}

	// The resumed stream's follower finds the log behind and has the worker
	// write it: the events come before the job's end, not with it.
	resumed := &streamed{}
	var stayedAt int64 // how far the follower that stayed was when the resumed stream got its first event
	if err := a.Stream(ctx, sub.JobID, client.StreamOptions{After: k}, func(ev client.Event) error {
		if len(resumed.events) == 0 {
			mu.Lock()
			stayedAt = stayed.events[len(stayed.events)-1].Seq
			mu.Unlock()
		}
		return resumed.add(ev)
	}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	stayed.check(t, 1)
	if end := stayed.events[len(stayed.events)-1].Seq; stayedAt > end-5 {
		t.Errorf("the resumed stream got its first event when the other follower was at %d of %d: it waited for the job's end", stayedAt, end)
	}
	if resumed.events[0].Seq != k+1 {
		t.Fatalf("the resumed stream starts at %d, want %d", resumed.events[0].Seq, k+1)
	}
	if want, got := eventsText(stayed.events[k:]), eventsText(resumed.events); got != want {
		t.Fatalf("the resumed stream differs from the one that stayed:\n%s\nwant\n%s", got, want)
	}
	replay := &streamed{}
	if err := b.Stream(ctx, sub.JobID, client.StreamOptions{}, replay.add); err != nil {
		t.Fatal(err)
	}
	if want, got := eventsText(stayed.events), eventsText(replay.events); got != want {
		t.Fatalf("the replay differs from the live stream:\n%s\nwant\n%s", got, want)
	}
	t.Logf("resumed after %d with %d logged and %d sent live; its first event came when the other follower was at %d of %d",
		k, logged, got, stayedAt, len(stayed.events))
}

// eventsText is what a client reads from events: each one's id, type and
// content.
func eventsText(evs []client.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "%d %s %q %q", ev.Seq, ev.Type, ev.Delta, ev.Arguments)
		if ev.Result != nil {
			fmt.Fprintf(&b, " %q", ev.Result.Content)
		}
		b.WriteString("\n")
	}
	return b.String()
}
