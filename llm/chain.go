package llm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Chain calls its providers in order: the next one when one is open or fails
// before its first token. A provider that cannot carry the request whole
// (tools or a response format it has no equivalent for) is passed over. A provider that fails after streaming part of a
// reply ends the attempt (the pipeline announces a retry); a provider that
// rejects the request (400, 401, …) ends it too, with no fallback: the
// request, not the provider, is at fault.
type Chain struct {
	links []Provider
}

// NewChain returns a chain of providers, primary first.
func NewChain(links ...Provider) *Chain { return &Chain{links: links} }

// AllDownError says that no provider of the chain could answer.
type AllDownError struct {
	AllOpen bool      // every breaker was open: nothing was called
	Until   time.Time // when AllOpen: the earliest half-open
	Errs    []error
}

// Unwrap exposes each provider's error (a 429's Retry-After, for one).
func (e *AllDownError) Unwrap() []error { return e.Errs }

func (e *AllDownError) Error() string {
	msgs := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		msgs[i] = err.Error()
	}
	return "all providers unavailable: " + strings.Join(msgs, "; ")
}

// AllOpen reports whether every provider's breaker is open, as this process
// last read them, and when the first goes half-open.
func (c *Chain) AllOpen() (bool, time.Time) {
	var until time.Time
	for _, p := range c.links {
		g, ok := p.(*Guarded)
		if !ok {
			return false, time.Time{}
		}
		g.mu.Lock()
		st, u := g.effectiveLocked(time.Now()), g.until
		g.mu.Unlock()
		if st != gobreaker.StateOpen {
			return false, time.Time{}
		}
		if until.IsZero() || u.Before(until) {
			until = u
		}
	}
	return len(c.links) > 0, until
}

// Stream calls the chain; it returns the reply and the provider that gave it.
func (c *Chain) Stream(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, string, error) {
	all := &AllDownError{AllOpen: true}
	var capacity *CapacityError
	unsupported := ""
	for i, p := range c.links {
		if cr, ok := p.(Carrier); ok {
			if f := cr.Unsupported(req); f != "" {
				unsupported = cmp.Or(unsupported, f) // the primary's reason is the one to tell
				continue
			}
		}
		preq := req
		if i > 0 {
			preq.Model = "" // a job's model names the primary's; fallbacks use their own
		}
		emitted := false
		reply, err := p.Stream(ctx, preq, func(d Delta) error { emitted = true; return onDelta(d) })
		if err == nil {
			return reply, p.Name(), nil
		}
		var open *ErrOpen
		var busy *CapacityError
		switch {
		case errors.As(err, &busy):
			// At capacity: the next provider may answer now; if none does,
			// the job waits for the earliest capacity instead of degrading.
			if capacity == nil || busy.Until.Before(capacity.Until) {
				capacity = busy
			}
		case errors.As(err, &open):
			if all.Until.IsZero() || open.Until.Before(all.Until) {
				all.Until = open.Until
			}
		case emitted, ctx.Err() != nil, !Retryable(err):
			return Reply{}, p.Name(), err
		default:
			all.AllOpen = false
		}
		all.Errs = append(all.Errs, err)
	}
	if capacity != nil {
		return Reply{}, capacity.Provider, capacity
	}
	if len(all.Errs) == 0 && unsupported != "" {
		msg := unsupported + " cannot be carried to any configured provider"
		return Reply{}, "", &Error{Provider: "none", Status: 400, RequestFault: msg, Msg: msg}
	}
	if len(all.Errs) == 0 {
		return Reply{}, "", fmt.Errorf("no providers configured")
	}
	return Reply{}, "", all
}
