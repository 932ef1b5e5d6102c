// Package stream carries a job's events from the worker that runs it to every
// client that follows it: the Emitter writes them (worker side), the Hub and
// Follow read them back live and from the replay log (API side).
package stream

import (
	"cmp"
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/chatfleet/chatfleet/store"
)

// Coalescing bounds Redis work on long replies: the first delta of an attempt
// goes out at once (time to first token), later ones are batched until Window
// has passed or MaxBytes are waiting, while a client follows the job's tokens
// live. Such a batch goes out live, ahead of the log (Log.PublishAhead: a
// bare publish, pipelined across jobs), and the log is written for
// Unfollowed's window at a time (Log.SyncEvents: one fenced script for all
// that went out live meanwhile). Otherwise (nobody asked for them: the
// caller polls, waits for a webhook or for the whole answer; or the last
// event reached no subscriber: the follower left) batches wait for
// Unfollowed instead, up to UnfollowedMaxBytes, and go to the log: it stays
// exact, it is only written less often. A follower that arrives, or finds
// the log behind the live events, tells the worker (Emitter.Followed): what
// waits goes to the log at once.
type Coalescing struct {
	Window   time.Duration
	MaxBytes int
	// Unfollowed is the window while nobody follows, and of the log's writes
	// while somebody does (0 or less than Window: Window).
	Unfollowed time.Duration
}

// UnfollowedMaxBytes bounds a batch that waits for nobody: memory per job in
// flight, and the size of one append.
const UnfollowedMaxBytes = 16 << 10

// publishAttempts is how often one write is offered to Redis in a row; what
// is still unconfirmed after them stays first in line and is offered again
// after retryAfter, ahead of anything newer, under the same numbers: the
// log gets each event exactly once (store.AppendEvent, store.SyncEvents).
// What the log has not confirmed when the attempt ends goes with the final
// script (Tail).
const publishAttempts = 3

const retryAfter = 250 * time.Millisecond

// Log is where one attempt's events go: the job's event log, each write
// fenced by the attempt (jobs.Attempt). n numbers the attempt's events; an
// event sent again with its number is not appended twice. Once an append
// has told where the attempt's events go in the log (base), the rest are
// written by their seqs: live ahead of the log, and to the log in syncs.
type Log interface {
	AppendEvent(ctx context.Context, n int64, p store.Payload) (store.Appended, error)
	PublishAhead(ctx context.Context, base, seq int64, entry string, first bool) (int64, error)
	SyncEvents(ctx context.Context, from int64, entries []string, live bool) (int64, error)
}

// Emitter publishes one attempt's token deltas and tool-call fragments to a
// job's event log, in the order they came.
type Emitter struct {
	ctx  context.Context
	log  Log
	c    Coalescing
	mu   sync.Mutex
	buf  strings.Builder      // waiting text, or the waiting arguments of tool
	tool *store.ToolCallEvent // what waits is a fragment of this tool call
	// queue holds events handed out and not confirmed in the log yet,
	// oldest first; the first is numbered n-len(queue)+1.
	queue []store.Payload
	n     int64 // events numbered so far
	// base is the seq in the log of the attempt's event 1 (0: not known
	// yet): event i goes to seq base+i-1, as nothing else writes the log
	// while the attempt owns it.
	base  int64
	ahead int64 // events up to this number went out live ahead of the log
	tm    *time.Timer
	last  time.Time   // when a batch last went out
	logTm *time.Timer // the next sync of what went out live
	sent  int         // token and tool_call events handed out
	// failing: the first in line could not be written; the retry's timer
	// sends it, and all that follows it.
	failing bool
	// aheadFailed: a live publish failed; events go to the log until a
	// sync has caught it up (nothing is published ahead past a gap).
	aheadFailed bool
	wentAhead   bool  // an event went out ahead of the log
	dropped     bool  // Flush gave up on events that may have reached the log
	err         error // sticky: store.ErrJobFinished once the job was canceled, store.ErrSuperseded once taken over
	// followed: a client asked for the tokens live (Followed); unfollowed:
	// the last event reached no subscriber all the same.
	followed, unfollowed bool
}

// NewEmitter returns an emitter writing to log.
func NewEmitter(ctx context.Context, log Log, c Coalescing) *Emitter {
	return &Emitter{ctx: ctx, log: log, c: c}
}

// Delta takes the next piece of the reply. It returns store.ErrJobFinished
// once the job has been canceled, or store.ErrSuperseded once another attempt
// owns it; either aborts the provider call.
func (e *Emitter) Delta(d string) error {
	if d == "" {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	if e.tool != nil {
		e.takeLocked() // text after a tool call's fragment goes out after it
	}
	e.buf.WriteString(d)
	e.scheduleLocked()
	return e.err
}

// ToolCall takes the next fragment of the index-th tool call (id and name
// on its first). Fragments of one call are batched like text; a fragment
// of another call, or text, goes out after the waiting one.
func (e *Emitter) ToolCall(index int, id, name, args string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	if t := e.tool; (t == nil && e.buf.Len() > 0) || (t != nil && (t.Index != index || ((id != "" || name != "") && (t.ID != "" || t.Name != "" || e.buf.Len() > 0)))) {
		e.takeLocked()
	}
	if e.tool == nil {
		e.tool = &store.ToolCallEvent{Index: index}
	}
	e.tool.ID = cmp.Or(e.tool.ID, id)
	e.tool.Name = cmp.Or(e.tool.Name, name)
	e.buf.WriteString(args)
	e.scheduleLocked()
	return e.err
}

// scheduleLocked sends what is in line (a tool call's fragment that text
// or another call followed), then what waits if it is due (an attempt's
// first piece, a full batch), or arms the window's timer. While writes
// fail, the retry's timer is left to send it all.
func (e *Emitter) scheduleLocked() {
	if e.failing {
		return
	}
	if e.ahead < e.n {
		if e.sendLocked(false); e.failing {
			return
		}
	}
	window, maxBytes := e.c.Window, e.c.MaxBytes
	if !e.followedLocked() && e.c.Unfollowed > window {
		window, maxBytes = e.c.Unfollowed, UnfollowedMaxBytes
	}
	// A window bounds how often batches go out, counted from the last: a
	// delta that comes a window or more after it goes at once (a model
	// slower than the window is followed word by word, without waiting).
	wait := window - time.Since(e.last)
	switch {
	case e.sent == 0 || e.buf.Len() >= maxBytes || wait <= 0:
		e.flushLocked(false)
	case e.tm == nil:
		e.tm = e.after(wait, func() { e.flushLocked(false) })
	}
}

func (e *Emitter) followedLocked() bool { return e.followed && !e.unfollowed }

// liveLocked: events go out live ahead of the log, which is written later.
func (e *Emitter) liveLocked() bool {
	return e.followedLocked() && e.base > 0 && !e.aheadFailed && e.c.Unfollowed > e.c.Window
}

// after runs f under the lock once d has passed.
func (e *Emitter) after(d time.Duration, f func()) *time.Timer {
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		switch t {
		case e.tm:
			e.tm = nil
		case e.logTm:
			e.logTm = nil
		default:
			return // stopped, or replaced
		}
		f()
	})
	return t
}

// Starts says where in the log the attempt's first event goes (the attempt
// began with seq-1 events there): followed, even its first batch goes out
// live, ahead of the log. Without it the first append tells.
func (e *Emitter) Starts(seq int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == 0 && seq > 0 {
		e.base = seq
	}
}

// Followed says a client follows the job's tokens live (it has subscribed,
// or it found the log behind what it was sent live): what waits goes out
// now, the log is brought up to date, and later deltas go out at the
// followed window.
func (e *Emitter) Followed() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.followed, e.unfollowed = true, false
	if e.sent == 0 || e.failing || e.err != nil {
		return
	}
	e.flushLocked(false)
	if e.base > 0 && len(e.queue) > 0 {
		e.syncLocked(false)
	}
}

// Flush publishes whatever is waiting, once: at the end of an attempt that
// failed, so that the events that follow (retry, final) come after every
// token. What the log did not confirm is dropped: the failure's retry
// event tells followers to discard the attempt's output anyway (Emitted).
func (e *Emitter) Flush() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.flushLocked(true)
	return e.err
}

// Tail hands over what the log has not confirmed, instead of publishing it,
// for the final script to append just before the final event: a fast
// reply's last batch then costs no round trip of its own, and an append
// that failed is made there, once.
func (e *Emitter) Tail() store.Tail {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
	if e.tool != nil {
		e.takeLocked()
	}
	first := e.n - int64(len(e.queue)) + 1
	t := store.Tail{Unconfirmed: e.queue, N: first, Text: e.buf.String()}
	if e.base > 0 {
		t.Seq = e.base + first - 1
	}
	e.queue = nil
	e.buf.Reset()
	return t
}

// Emitted reports whether any token of this attempt may have reached the
// log (one whose append was not confirmed may have).
func (e *Emitter) Emitted() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sent > 0 || len(e.queue) > 0 || e.dropped
}

func (e *Emitter) stopLocked() {
	for _, t := range []**time.Timer{&e.tm, &e.logTm} {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
	}
}

// takeLocked numbers what waits as the next event and puts it in line.
func (e *Emitter) takeLocked() {
	if e.buf.Len() == 0 && e.tool == nil {
		return
	}
	var ev store.Payload = store.TokenEvent{Delta: e.buf.String()}
	if e.tool != nil {
		t := *e.tool
		t.Arguments = e.buf.String()
		ev, e.tool = t, nil
	}
	e.buf.Reset()
	e.n++
	e.queue = append(e.queue, ev)
}

// flushLocked sends what is in line and what waits, in order.
func (e *Emitter) flushLocked(final bool) {
	if e.tm != nil {
		e.tm.Stop()
		e.tm = nil
	}
	if e.err != nil {
		return
	}
	e.takeLocked()
	e.last = time.Now()
	e.sendLocked(final)
}

// sendLocked hands out what is in line: by one append each until the log
// has told where the attempt's events go, then live ahead of the log (the
// log's timer syncs them), or in one sync. When a write fails the retry's
// timer tries again, unless the attempt is over; a final send drops what
// it could not write.
func (e *Emitter) sendLocked(final bool) {
	for e.base == 0 && len(e.queue) > 0 {
		if !e.appendFirstLocked() {
			e.failedLocked(final)
			return
		}
	}
	if len(e.queue) == 0 {
		e.failing = false
		return
	}
	if !e.liveLocked() || final {
		e.syncLocked(final)
		return
	}
	for e.ahead < e.n && e.liveLocked() {
		e.publishAheadLocked()
	}
	if !e.liveLocked() { // the follower left, or a publish failed
		e.syncLocked(false)
		return
	}
	e.failing = false
	if e.logTm == nil {
		e.logTm = e.after(e.c.Unfollowed, func() { e.syncLocked(false) })
	}
}

// failedLocked leaves the first in line for the retry's timer, or drops
// what waits when the attempt is over.
func (e *Emitter) failedLocked(final bool) {
	e.stopLocked()
	if final {
		e.queue, e.dropped, e.failing = nil, true, false
		return
	}
	e.failing = true
	if e.ctx.Err() == nil {
		e.tm = e.after(retryAfter, func() { e.flushLocked(false) })
	}
}

// publishAheadLocked sends the next event live, at the seq it will have in
// the log.
func (e *Emitter) publishAheadLocked() {
	n := e.ahead + 1
	ev := e.queue[len(e.queue)-int(e.n-n)-1]
	entry, err := store.Entry(e.base+n-1, ev)
	if err == nil {
		var reached int64
		reached, err = e.log.PublishAhead(e.ctx, e.base, e.base+n-1, entry, !e.wentAhead)
		if err == nil {
			e.ahead, e.unfollowed, e.wentAhead = n, reached == 0, true
			e.sent++
			return
		}
	}
	e.aheadFailed = true // the sync writes it, and what follows it
}

// syncLocked writes what is in line to the log, by seq. live: only its
// last entry is published, followers had the rest.
func (e *Emitter) syncLocked(final bool) {
	if e.logTm != nil {
		e.logTm.Stop()
		e.logTm = nil
	}
	if len(e.queue) == 0 || e.err != nil {
		return
	}
	first := e.n - int64(len(e.queue)) + 1
	entries := make([]string, len(e.queue))
	for i, ev := range e.queue {
		var err error
		if entries[i], err = store.Entry(e.base+first-1+int64(i), ev); err != nil {
			e.err = err
			return
		}
	}
	live := e.ahead >= e.n
	var err error
	var reached int64
	for i := range publishAttempts {
		reached, err = e.log.SyncEvents(e.ctx, e.base+first-1, entries, live)
		if err == nil || e.settledLocked(err) || e.ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(25<<i) * time.Millisecond)
	}
	switch {
	case err == nil:
		e.sent += int(e.n - e.ahead)
		e.ahead = e.n
		e.queue, e.failing, e.aheadFailed = nil, false, false
		e.unfollowed = reached == 0
	case e.settledLocked(err):
		e.queue = nil
	default:
		e.failedLocked(final)
	}
}

// settledLocked records an error after which the attempt may write no
// more: it was canceled, or another attempt took the job over.
func (e *Emitter) settledLocked(err error) bool {
	switch {
	case errors.Is(err, store.ErrSuperseded):
		e.err = err
	case errors.Is(err, store.ErrJobFinished) || errors.Is(err, store.ErrNotFound):
		e.err = store.ErrJobFinished
	default:
		return false
	}
	return true
}

// appendFirstLocked offers the first event in line to the log: true once it
// is settled (appended, or the attempt may append no more), false when the
// log could not confirm it. An append tells where the attempt's events go.
func (e *Emitter) appendFirstLocked() bool {
	n := e.n - int64(len(e.queue)) + 1
	var err error
	var a store.Appended
	for i := range publishAttempts {
		a, err = e.log.AppendEvent(e.ctx, n, e.queue[0])
		if err == nil || e.settledLocked(err) || e.ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(25<<i) * time.Millisecond)
	}
	switch {
	case err == nil:
		e.queue = e.queue[1:]
		e.sent++
		e.base, e.ahead = a.Seq-n+1, n
		if !a.Repeated {
			e.unfollowed = a.Followers == 0
		}
		return true
	case e.err != nil:
		e.queue = nil
		return true
	}
	return false // offered again later, or with the attempt's end (Tail)
}
