package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/store"
)

func newStore(t testing.TB) *store.Store {
	c := testkit.StartRedis(t).Client()
	return store.New(c, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
}

func activeJob(t testing.TB, st *store.Store, id string) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := st.Create(ctx, store.NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if a, err := st.StartAttempt(ctx, id, "t", id, id, "", false, time.Minute); err != nil || a.N != 1 {
		t.Fatal(err)
	}
}

func deltas(t *testing.T, st *store.Store, id string) []string {
	t.Helper()
	evs, err := st.Events(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range evs {
		var d struct{ Delta string }
		if err := json.Unmarshal([]byte(ev.Data), &d); err != nil {
			t.Fatal(err)
		}
		out = append(out, d.Delta)
	}
	return out
}

// The first delta goes out alone and at once; the rest are batched by size
// and time, and nothing is lost or reordered.
func TestEmitterCoalesces(t *testing.T) {
	st := newStore(t)
	activeJob(t, st, "job_c")
	e := NewEmitter(context.Background(), attemptOf(st, "job_c", 1), Coalescing{Window: time.Hour, MaxBytes: 10})
	var want strings.Builder
	for i := range 30 {
		d := string(rune('a'+i%26)) + " "
		want.WriteString(d)
		if err := e.Delta(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	got := deltas(t, st, "job_c")
	if got[0] != "a " || strings.Join(got, "") != want.String() {
		t.Fatalf("deltas %q", got)
	}
	if len(got) > 8 { // 1 + 59 bytes in batches of at least 10 bytes
		t.Fatalf("%d events for 30 deltas; coalescing did not batch", len(got))
	}

	// With a short window the timer flushes a batch without a further delta.
	activeJob(t, st, "job_t")
	e = NewEmitter(context.Background(), attemptOf(st, "job_t", 1), Coalescing{Window: 20 * time.Millisecond, MaxBytes: 1 << 20})
	_ = e.Delta("first")
	_ = e.Delta(" second")
	deadline := time.Now().Add(2 * time.Second)
	for len(deltas(t, st, "job_t")) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the window never flushed the batch")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Once the job is canceled the emitter refuses further deltas, so the
// provider call stops and nothing follows the final event.
func TestEmitterStopsAfterCancel(t *testing.T) {
	st := newStore(t)
	activeJob(t, st, "job_x")
	e := NewEmitter(context.Background(), attemptOf(st, "job_x", 1), Coalescing{Window: 0, MaxBytes: 1})
	if err := e.Delta("one"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Finish(context.Background(), "job_x", "t", "job_x", 0, store.Outcome{Status: store.StatusCanceled}); err != nil {
		t.Fatal(err)
	}
	if err := e.Delta("two"); err != store.ErrJobFinished {
		t.Fatalf("delta after cancel: %v", err)
	}
	evs, _ := st.Events(context.Background(), "job_x", 0)
	if len(evs) != 2 || evs[1].Type != store.EventCanceled {
		t.Fatalf("log %+v", evs)
	}
}

// A reply's last batch, handed over with Tail, goes out in the final script:
// one token event just before `done`, in order after the ones published, and
// nothing is published twice.
func TestTailGoesOutWithTheFinalEvent(t *testing.T) {
	st := newStore(t)
	activeJob(t, st, "job_tail")
	e := NewEmitter(context.Background(), attemptOf(st, "job_tail", 1), Coalescing{Window: time.Hour, MaxBytes: 1 << 20})
	for _, d := range []string{"one", " two", " three"} {
		if err := e.Delta(d); err != nil {
			t.Fatal(err)
		}
	}
	if got := deltas(t, st, "job_tail"); len(got) != 1 || got[0] != "one" {
		t.Fatalf("before the end: %q", got)
	}
	f, err := st.Finish(context.Background(), "job_tail", "t", "job_tail", 1, store.Outcome{Status: store.StatusSucceeded,
		Result: &store.Result{Content: "one two three"}, Tail: e.Tail()})
	if err != nil || !f.First {
		t.Fatalf("finish: %+v %v", f, err)
	}
	evs, err := st.Events(context.Background(), "job_tail", 0)
	if err != nil || len(evs) != 3 || evs[1].Type != "token" || evs[2].Type != "done" || evs[2].Seq != 3 {
		t.Fatalf("events %+v %v", evs, err)
	}
	var d struct{ Delta string }
	if err := json.Unmarshal([]byte(evs[1].Data), &d); err != nil || d.Delta != " two three" {
		t.Fatalf("tail event %s %v", evs[1].Data, err)
	}
	if tail := e.Tail(); tail.Text != "" || len(tail.Unconfirmed) > 0 {
		t.Fatalf("the tail was handed over twice: %+v", tail)
	}
}

// Tool-call fragments are typed events in order with the text: fragments of
// one call are batched, id and name go out once, and another call or text
// sends what waits first.
func TestEmitterCarriesToolCalls(t *testing.T) {
	st := newStore(t)
	activeJob(t, st, "job_tc")
	e := NewEmitter(context.Background(), attemptOf(st, "job_tc", 1), Coalescing{Window: time.Hour, MaxBytes: 1 << 10})
	steps := []func() error{
		func() error { return e.Delta("Let me look.") },
		func() error { return e.ToolCall(0, "call_a", "weather", "") },
		func() error { return e.ToolCall(0, "", "", `{"city":`) },
		func() error { return e.ToolCall(0, "", "", `"Paris"}`) },
		func() error { return e.ToolCall(1, "call_b", "time", `{"tz":`) },
		func() error { return e.ToolCall(1, "", "", `"CET"}`) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	if !e.Emitted() {
		t.Fatal("tool calls count as output")
	}
	// The waiting fragment goes with the final script.
	tail := e.Tail()
	if tail.Text != "" || len(tail.Unconfirmed) != 1 {
		t.Fatalf("a waiting tool call fragment is no text tail: %+v", tail)
	}
	if _, err := st.Finish(context.Background(), "job_tc", "t", "job_tc", 1, store.Outcome{Status: store.StatusCanceled, Tail: tail}); err != nil {
		t.Fatal(err)
	}
	evs, err := st.Events(context.Background(), "job_tc", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []store.Payload
	for _, ev := range evs {
		p, err := ev.Decode()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	want := []store.Payload{
		store.TokenEvent{Seq: 1, Delta: "Let me look."},
		store.ToolCallEvent{Seq: 2, Index: 0, ID: "call_a", Name: "weather", Arguments: `{"city":"Paris"}`},
		store.ToolCallEvent{Seq: 3, Index: 1, ID: "call_b", Name: "time", Arguments: `{"tz":"CET"}`},
		store.CanceledEvent{Seq: 4},
	}
	if len(got) != len(want) {
		t.Fatalf("events %#v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("event %d: %#v, want %#v", i, got[i], want[i])
		}
	}
}

// fencedSink writes as attempt n of job id (what jobs.Attempt does).
type fencedSink struct {
	st *store.Store
	id string
	n  int
}

func (f fencedSink) AppendEvent(ctx context.Context, n int64, p store.Payload) (store.Appended, error) {
	return f.st.AppendEvent(ctx, f.id, f.n, n, p)
}

func (f fencedSink) PublishAhead(ctx context.Context, base, seq int64, entry string, first bool) (int64, error) {
	return f.st.PublishAhead(ctx, f.id, f.n, base, seq, entry, first)
}

func (f fencedSink) SyncEvents(ctx context.Context, from int64, entries []string, live bool) (int64, error) {
	return f.st.SyncEvents(ctx, f.id, f.n, from, entries, live)
}

func attemptOf(st *store.Store, id string, n int) Log { return fencedSink{st, id, n} }

// While nobody follows, deltas wait for the longer window; a follower that
// subscribes and says so gets what waits at once, and the rest at the
// followed window. The log holds every delta in order either way.
func TestEmitterBatchesLongerWhileUnfollowed(t *testing.T) {
	rd := testkit.StartRedis(t)
	st := store.New(rd.Client(), store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
	activeJob(t, st, "job_u")
	e := NewEmitter(context.Background(), attemptOf(st, "job_u", 1), Coalescing{Window: 5 * time.Millisecond, MaxBytes: 1000, Unfollowed: time.Hour})
	send := func(ds ...string) {
		for _, d := range ds {
			if err := e.Delta(d); err != nil {
				t.Fatal(err)
			}
		}
	}
	// logged waits until the log holds want (a short window's time at most,
	// never the unfollowed hour).
	logged := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for got := ""; got != want; got = strings.Join(deltas(t, st, "job_u"), "|") {
			if time.Now().After(deadline) {
				t.Fatalf("the log holds %q, want %q", got, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	send("a ", "b ", "c ", "d ")
	time.Sleep(50 * time.Millisecond) // ten followed windows
	logged("a ")                      // the first delta alone, the rest waiting
	sub := rd.Client().Subscribe(context.Background(), rkeys.LiveChannel("job_u"))
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil { // the subscription stands
		t.Fatal(err)
	}
	e.Followed()
	logged("a |b c d ")
	// Followed, deltas go out live within the window, ahead of the log,
	// each under the seq it will have there; a wake (a follower that found
	// the log behind) writes them to the log at once.
	for i, d := range []string{"e ", "f "} {
		seq := int64(i + 3)
		send(d)
		for {
			m, err := sub.ReceiveMessage(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			ev, err := store.ParseMessage(m.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Live == 0 || ev.Seq < seq {
				continue // "b c d ": live, and the log's own publish for a follower behind
			}
			if want := fmt.Sprintf(`{"seq":%d,"delta":%q}`, seq, d); ev.Live != 1 || ev.Data != want {
				t.Fatalf("live: %+v, want %s of the attempt from seq 1", ev, want)
			}
			break
		}
	}
	if got := strings.Join(deltas(t, st, "job_u"), "|"); got != "a |b c d " {
		t.Fatalf("the log holds %q before its window", got)
	}
	e.Followed()
	logged("a |b c d |e |f ")
	// The follower leaves: the next event reaches nobody, later ones wait again.
	sub.Close()
	for n := int64(1); n > 0; time.Sleep(time.Millisecond) {
		n = rd.Client().PubSubNumSub(context.Background(), rkeys.LiveChannel("job_u")).Val()[rkeys.LiveChannel("job_u")]
	}
	send("g ")
	logged("a |b c d |e |f |g ")
	send("h ", "i ")
	time.Sleep(50 * time.Millisecond)
	logged("a |b c d |e |f |g ")
	if tail := e.Tail(); tail.Text != "h i " {
		t.Fatalf("waiting at the end: %+v", tail)
	}
}

// flakyLog fails appends as a Redis under strain does: some never reach it
// (refused), some are applied and their reply is lost (timed out).
type flakyLog struct {
	Log
	mu    sync.Mutex
	rnd   *rand.Rand
	calls map[string]int
}

// fault picks what happens to a write: "refused", "timed out" (applied,
// its reply lost) or "ok".
func (f *flakyLog) fault() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	what := "ok"
	switch r := f.rnd.IntN(10); {
	case r < 3:
		what = "refused"
	case r < 6:
		what = "timed out"
	}
	f.calls[what]++
	return what
}

var errRefused = errors.New("redis: connection refused")

func (f *flakyLog) AppendEvent(ctx context.Context, n int64, p store.Payload) (store.Appended, error) {
	switch f.fault() {
	case "refused":
		return store.Appended{}, errRefused
	case "timed out":
		if _, err := f.Log.AppendEvent(ctx, n, p); err != nil {
			return store.Appended{}, err
		}
		return store.Appended{}, fmt.Errorf("append event: %w", context.DeadlineExceeded)
	}
	return f.Log.AppendEvent(ctx, n, p)
}

func (f *flakyLog) SyncEvents(ctx context.Context, from int64, entries []string, live bool) (int64, error) {
	switch f.fault() {
	case "refused":
		return 0, errRefused
	case "timed out":
		if _, err := f.Log.SyncEvents(ctx, from, entries, live); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("sync events: %w", context.DeadlineExceeded)
	}
	return f.Log.SyncEvents(ctx, from, entries, live)
}

func (f *flakyLog) PublishAhead(ctx context.Context, base, seq int64, entry string, first bool) (int64, error) {
	switch f.fault() {
	case "refused":
		return 0, errRefused
	case "timed out":
		if _, err := f.Log.PublishAhead(ctx, base, seq, entry, first); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("publish live event: %w", context.DeadlineExceeded)
	}
	reached, err := f.Log.PublishAhead(ctx, base, seq, entry, first)
	if err == nil {
		f.mu.Lock()
		f.calls["live"]++
		f.mu.Unlock()
	}
	return reached, err
}

// Under appends that fail or time out after they were applied, the log
// still holds the reply exactly once, in order: what streamed equals what
// was stored, tool calls included, and no seq repeats.
// Half the runs are followed: their deltas go out live ahead of the log,
// whose syncs and the final script's settle put them in at their seqs.
func TestTheLogHoldsTheReplyOnceUnderFailingAppends(t *testing.T) {
	rd := testkit.StartRedis(t)
	st := store.New(rd.Client(), store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
	liveRuns := 0
	for seed := range uint64(20) {
		id := fmt.Sprintf("job_flaky_%d", seed)
		activeJob(t, st, id)
		log := &flakyLog{Log: attemptOf(st, id, 1), rnd: rand.New(rand.NewPCG(seed, 7)), calls: map[string]int{}}
		e := NewEmitter(context.Background(), log, Coalescing{Window: time.Millisecond, MaxBytes: 8, Unfollowed: 5 * time.Millisecond})
		followed := seed%2 == 1
		if followed {
			sub := rd.Client().Subscribe(context.Background(), rkeys.LiveChannel(id))
			defer sub.Close()
			if _, err := sub.Receive(context.Background()); err != nil {
				t.Fatal(err)
			}
			e.Followed()
		}
		var want strings.Builder
		for i := range 40 {
			d := fmt.Sprintf("w%d ", i)
			want.WriteString(d)
			if err := e.Delta(d); err != nil {
				t.Fatal(err)
			}
			if i%3 == 0 {
				time.Sleep(2 * time.Millisecond) // let the window's and the retry's timers fire
			}
		}
		if err := e.ToolCall(0, "call_1", "lookup", `{"q":`); err != nil {
			t.Fatal(err)
		}
		if err := e.ToolCall(0, "", "", `"x"}`); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Finish(context.Background(), id, "t", id, 1, store.Outcome{Status: store.StatusSucceeded,
			Result: &store.Result{Content: want.String()}, Tail: e.Tail()}); err != nil {
			t.Fatal(err)
		}
		evs, err := st.Events(context.Background(), id, 0)
		if err != nil {
			t.Fatal(err)
		}
		var text, args strings.Builder
		for i, ev := range evs {
			if ev.Seq != int64(i+1) {
				t.Fatalf("seed %d: event %d has seq %d", seed, i, ev.Seq)
			}
			p, err := ev.Decode()
			if err != nil {
				t.Fatal(err)
			}
			switch p := p.(type) {
			case store.TokenEvent:
				if args.Len() > 0 {
					t.Fatalf("seed %d: text after the tool call", seed)
				}
				text.WriteString(p.Delta)
			case store.ToolCallEvent:
				args.WriteString(p.Arguments)
			case store.DoneEvent:
				if i != len(evs)-1 {
					t.Fatalf("seed %d: done is not last", seed)
				}
			default:
				t.Fatalf("seed %d: unexpected %s event", seed, ev.Type)
			}
		}
		if text.String() != want.String() || args.String() != `{"q":"x"}` {
			t.Fatalf("seed %d (%v): the log holds %q and %q; the reply was %q", seed, log.calls, text.String(), args.String(), want.String())
		}
		if log.calls["refused"] == 0 || log.calls["timed out"] == 0 {
			t.Fatalf("seed %d: no fault injected: %v", seed, log.calls)
		}
		if followed && log.calls["live"] > 0 {
			liveRuns++
		}
	}
	if liveRuns < 3 {
		t.Fatalf("only %d of the 10 followed runs sent events live ahead of the log", liveRuns)
	}
}
