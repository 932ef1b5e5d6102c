package llm

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Timeouts bound the waits within one provider call.
type Timeouts struct {
	FirstToken time.Duration // for the first token (0: none)
	Idle       time.Duration // between two tokens (0: none)
}

type timeoutCause struct{ what string }

func (t *timeoutCause) Error() string { return t.what }

// stream calls the provider with the first-token and idle timeouts: a call
// that sends nothing, or stalls, is cut and reported as a retryable timeout.
func (g *Guarded) stream(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, error) {
	t := g.timeouts
	if t.FirstToken <= 0 && t.Idle <= 0 {
		return g.Provider.Stream(ctx, req, onDelta)
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var started atomic.Bool
	arm := func(d time.Duration, what string) *time.Timer {
		if d <= 0 {
			return nil
		}
		return time.AfterFunc(d, func() { cancel(&timeoutCause{what}) })
	}
	first := arm(t.FirstToken, fmt.Sprintf("no first token within %s", t.FirstToken))
	var idle *time.Timer // one timer, reset at each token (a reply is hundreds of tokens)
	reply, err := g.Provider.Stream(cctx, req, func(d Delta) error {
		if !started.Load() {
			if first != nil {
				first.Stop()
			}
			started.Store(true)
			idle = arm(t.Idle, fmt.Sprintf("no token for %s mid-reply", t.Idle))
		} else if idle != nil {
			idle.Reset(t.Idle)
		}
		return onDelta(d)
	})
	for _, tm := range []*time.Timer{first, idle} {
		if tm != nil {
			tm.Stop()
		}
	}
	var tc *timeoutCause
	if err != nil && ctx.Err() == nil && errors.As(context.Cause(cctx), &tc) {
		return Reply{}, &Error{Provider: g.Name(), Retryable: true, Timeout: true, AfterOutput: started.Load(), Msg: tc.what}
	}
	return reply, err
}
