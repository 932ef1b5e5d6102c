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

// publishAttempts is how often one event is offered to Redis before the
// emitter gives up on it; the final result is recorded separately and never
// depends on it.
const publishAttempts = 3

// Log is where one attempt's events go: the job's event log, each write
// fenced by the attempt (jobs.Attempt).
type Log interface {
	AppendEvent(ctx context.Context, p store.Payload) (store.Appended, error)
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
	tm   *time.Timer
	sent int   // token and tool_call events published
	err  error // sticky: store.ErrJobFinished once the job was canceled, store.ErrSuperseded once taken over
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
		e.flushLocked() // text after a tool call's fragment goes out after it
	}
	e.buf.WriteString(d)
	e.scheduleLocked()
	return e.err
}

// ToolCall takes the next fragment of the index-th tool call (id and name
// on its first). Fragments of one call are batched like text; a fragment
// of another call, or text, sends the waiting one first.
func (e *Emitter) ToolCall(index int, id, name, args string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	if t := e.tool; (t == nil && e.buf.Len() > 0) || (t != nil && (t.Index != index || ((id != "" || name != "") && (t.ID != "" || t.Name != "" || e.buf.Len() > 0)))) {
		e.flushLocked()
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

// scheduleLocked sends what waits now (an attempt's first piece, or a full
// batch) or arms the window's timer.
func (e *Emitter) scheduleLocked() {
	window, maxBytes := e.c.Window, e.c.MaxBytes
	if (!e.followed || e.unfollowed) && e.c.Unfollowed > window {
		window, maxBytes = e.c.Unfollowed, UnfollowedMaxBytes
	}
	switch {
	case e.sent == 0 || e.buf.Len() >= maxBytes || window <= 0:
		e.flushLocked()
	case e.tm == nil:
		e.tm = time.AfterFunc(window, func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.flushLocked()
		})
	}
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
		e.flushLocked()
	}
}

// Flush publishes whatever is waiting. Call it before recording the outcome,
// so that the final event follows every token.
func (e *Emitter) Flush() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.flushLocked()
	return e.err
}

// Tail hands over whatever text is waiting instead of publishing it, for
// the final script to append just before the final event
// (store.Outcome.Tail): a fast reply's last batch then costs no round trip of
// its own. A waiting tool-call fragment is published here.
func (e *Emitter) Tail() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tool != nil {
		e.flushLocked()
	}
	if e.tm != nil {
		e.tm.Stop()
		e.tm = nil
	}
	t := e.buf.String()
	e.buf.Reset()
	return t
}

// Emitted reports whether any token of this attempt reached the log.
func (e *Emitter) Emitted() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sent > 0
}

func (e *Emitter) flushLocked() {
	if e.tm != nil {
		e.tm.Stop()
		e.tm = nil
	}
	if (e.buf.Len() == 0 && e.tool == nil) || e.err != nil {
		return
	}
	var ev store.Payload = store.TokenEvent{Delta: e.buf.String()}
	if e.tool != nil {
		t := *e.tool
		t.Arguments = e.buf.String()
		ev, e.tool = t, nil
	}
	e.buf.Reset()
	var err error
	var a store.Appended
	for i := range publishAttempts {
		a, err = e.log.AppendEvent(e.ctx, ev)
		if err == nil || errors.Is(err, store.ErrJobFinished) || errors.Is(err, store.ErrSuperseded) || errors.Is(err, store.ErrNotFound) || e.ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(25<<i) * time.Millisecond)
	}
	switch {
	case err == nil:
		e.sent++
		e.unfollowed = a.Followers == 0
	case errors.Is(err, store.ErrSuperseded):
		e.err = err
	case errors.Is(err, store.ErrJobFinished) || errors.Is(err, store.ErrNotFound):
		e.err = store.ErrJobFinished
	}
	// Other failures lose this delta from the live stream only: the result
	// recorded at the end holds the whole reply.
}
