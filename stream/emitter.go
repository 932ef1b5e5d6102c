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
// live. Otherwise (nobody asked for them: the caller polls, waits for a
// webhook or for the whole answer; or the last event reached no subscriber:
// the follower left) they are batched for Unfollowed instead, up to
// UnfollowedMaxBytes: the log stays exact, it is only written less often.
// A follower that arrives reads the log, and the worker is told to send what
// waits at once and go back to Window (Emitter.Followed).
type Coalescing struct {
	Window   time.Duration
	MaxBytes int
	// Unfollowed is the window while nobody follows (0 or less than Window: Window).
	Unfollowed time.Duration
}

// UnfollowedMaxBytes bounds a batch that waits for nobody: memory per job in
// flight, and the size of one append.
const UnfollowedMaxBytes = 16 << 10

// publishAttempts is how often one event is offered to Redis in a row; an
// event still unconfirmed after them stays first in line and is offered
// again after retryAfter, ahead of anything newer, under the same number: the
// log gets it exactly once (store.AppendEvent). What the log has not
// confirmed when the attempt ends goes with the final script (Tail).
const publishAttempts = 3

const retryAfter = 250 * time.Millisecond

// Log is where one attempt's events go: the job's event log, each write
// fenced by the attempt (jobs.Attempt). n numbers the attempt's events; an
// event sent again with its number is not appended twice.
type Log interface {
	AppendEvent(ctx context.Context, n int64, p store.Payload) (store.Appended, error)
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
	// queue holds events handed to the log and not confirmed yet, oldest
	// first; the first is numbered n-len(queue)+1. Only the first was
	// ever offered.
	queue []store.Payload
	n     int64 // events numbered so far
	tm    *time.Timer
	sent  int // token and tool_call events confirmed
	// failing: the first in line could not be appended; the retry's
	// timer sends it, and all that follows it.
	failing bool
	dropped bool  // Flush gave up on events that may have reached the log
	err     error // sticky: store.ErrJobFinished once the job was canceled, store.ErrSuperseded once taken over
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
// first piece, a full batch), or arms the window's timer. While appends
// fail, the retry's timer is left to send it all.
func (e *Emitter) scheduleLocked() {
	if e.failing {
		return
	}
	if len(e.queue) > 0 {
		if e.sendLocked(false); e.failing {
			return
		}
	}
	window, maxBytes := e.c.Window, e.c.MaxBytes
	if (!e.followed || e.unfollowed) && e.c.Unfollowed > window {
		window, maxBytes = e.c.Unfollowed, UnfollowedMaxBytes
	}
	switch {
	case e.sent == 0 || e.buf.Len() >= maxBytes || window <= 0:
		e.flushLocked(false)
	case e.tm == nil:
		e.armLocked(window)
	}
}

func (e *Emitter) armLocked(d time.Duration) {
	e.tm = time.AfterFunc(d, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.tm = nil
		e.flushLocked(false)
	})
}

// Followed says a client follows the job's tokens live (it has subscribed):
// what waits goes out now, and later deltas at the followed window.
func (e *Emitter) Followed() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.followed && !e.unfollowed {
		return
	}
	e.followed, e.unfollowed = true, false
	if e.sent > 0 {
		e.flushLocked(false)
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
	t := store.Tail{Unconfirmed: e.queue, N: e.n - int64(len(e.queue)) + 1, Text: e.buf.String()}
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
	if e.tm != nil {
		e.tm.Stop()
		e.tm = nil
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

// flushLocked appends what is in line and what waits, in order.
func (e *Emitter) flushLocked(final bool) {
	e.stopLocked()
	if e.err != nil {
		return
	}
	e.takeLocked()
	e.sendLocked(final)
}

// sendLocked appends what is in line until an append fails; then the
// retry's timer tries again, unless the attempt is over; a final send drops
// what it could not append.
func (e *Emitter) sendLocked(final bool) {
	for len(e.queue) > 0 {
		if e.appendFirstLocked() {
			continue
		}
		e.stopLocked()
		if final {
			e.queue, e.dropped, e.failing = nil, true, false
			return
		}
		e.failing = true
		if e.ctx.Err() == nil {
			e.armLocked(retryAfter)
		}
		return
	}
	e.failing = false
}

// appendFirstLocked offers the first event in line to the log: true once it
// is settled (appended, or the attempt may append no more), false when the
// log could not confirm it.
func (e *Emitter) appendFirstLocked() bool {
	n := e.n - int64(len(e.queue)) + 1
	var err error
	var a store.Appended
	for i := range publishAttempts {
		a, err = e.log.AppendEvent(e.ctx, n, e.queue[0])
		if err == nil || errors.Is(err, store.ErrJobFinished) || errors.Is(err, store.ErrSuperseded) || errors.Is(err, store.ErrNotFound) || e.ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(25<<i) * time.Millisecond)
	}
	switch {
	case err == nil:
		e.queue = e.queue[1:]
		e.sent++
		if !a.Repeated {
			e.unfollowed = a.Followers == 0
		}
		return true
	case errors.Is(err, store.ErrSuperseded):
		e.err = err
	case errors.Is(err, store.ErrJobFinished) || errors.Is(err, store.ErrNotFound):
		e.err = store.ErrJobFinished
	default:
		return false // offered again later, or with the attempt's end (Tail)
	}
	e.queue = nil
	return true
}
