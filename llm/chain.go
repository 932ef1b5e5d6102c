package llm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Chain routes a request to the public model it names (Group): one of the
// model's deployments that is healthy and has capacity now, chosen in
// proportion to its weight; another one when that one is open, at capacity
// or fails before its first token; then the model's fallbacks, in order,
// each with its own deployments. A deployment that cannot carry the request
// whole (tools or a response format it has no equivalent for) is passed
// over. A deployment that fails after streaming part of a reply ends the
// attempt (the pipeline announces a retry); one that rejects the request
// (400, 401, …) ends it too, with no fallback: the request, not the
// deployment, is at fault. When the deployments that could answer are at
// capacity, the job waits in the queue for the first (*CapacityError)
// instead of falling back.
type Chain struct {
	mu     sync.RWMutex
	groups map[string]*Group
	def    string
	// legacy: one model made from the CHATFLEET_LLM_* variables; any name a
	// request sends renames its first deployment's model, as it always did.
	legacy bool
	built  *builder // nil: made by NewChain
}

// Group is one public model: its deployments and the models it falls
// back to.
type Group struct {
	Name      string
	Links     []Provider
	Weights   []float64 // nil: in order, the first while it answers
	Fallbacks []string
}

// NewChain returns one model served by links in order, primary first (the
// provider chain of the CHATFLEET_LLM_* variables).
func NewChain(links ...Provider) *Chain {
	c := &Chain{}
	c.set("", []*Group{{Links: links}}, true)
	return c
}

func (c *Chain) set(def string, groups []*Group, legacy bool) {
	m := make(map[string]*Group, len(groups))
	for _, g := range groups {
		m[g.Name] = g
	}
	c.mu.Lock()
	c.groups, c.def, c.legacy = m, def, legacy
	c.mu.Unlock()
}

// group is the public model a request names, and the models to try after it.
func (c *Chain) group(model string) (*Group, []*Group, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	g, ok := c.groups[cmp.Or(model, c.def)]
	if !ok && c.legacy {
		g, ok = c.groups[c.def], true
	}
	if !ok {
		return nil, nil, false
	}
	var fbs []*Group
	for _, name := range g.Fallbacks {
		if f, ok := c.groups[name]; ok && f != g {
			fbs = append(fbs, f)
		}
	}
	return g, fbs, true
}

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

// AllOpen reports whether every deployment of the model and of its
// fallbacks has its breaker open, as this process last read them, and when
// the first goes half-open.
func (c *Chain) AllOpen(model string) (bool, time.Time) {
	g, fbs, ok := c.group(model)
	if !ok {
		return false, time.Time{}
	}
	var until time.Time
	n := 0
	for _, grp := range append([]*Group{g}, fbs...) {
		for _, p := range grp.Links {
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
			n++
		}
	}
	return n > 0, until
}

// Stream calls the model the request names; it returns the reply and the
// deployment that gave it. The reply's Asked (what usage is priced under)
// and, but for the legacy chain, its Model are the public name that answered.
func (c *Chain) Stream(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, string, error) {
	g, fbs, ok := c.group(req.Model)
	if !ok {
		return Reply{}, "", &UnknownModelError{Model: req.Model}
	}
	c.mu.RLock()
	legacy := c.legacy
	c.mu.RUnlock()
	t := &try{all: &AllDownError{AllOpen: true}}
	for _, grp := range append([]*Group{g}, fbs...) {
		reply, name, err, done := t.group(ctx, grp, req, legacy && grp == g, onDelta)
		if done {
			if err == nil && !legacy {
				reply.Asked, reply.Model = grp.Name, grp.Name
			}
			return reply, name, err
		}
		if t.capacity != nil {
			// The model's rate is its busy deployments' rates together.
			var perSecond float64
			for _, e := range t.every {
				perSecond += float64(time.Second) / float64(e)
			}
			c := *t.capacity
			if perSecond > 0 {
				c.Every = time.Duration(float64(time.Second) / perSecond)
			}
			return Reply{}, c.Provider, &c
		}
	}
	if len(t.all.Errs) == 0 && t.unsupported != "" {
		msg := t.unsupported + " cannot be carried to any configured provider"
		return Reply{}, "", &Error{Provider: "none", Status: 400, RequestFault: msg, Msg: msg}
	}
	if len(t.all.Errs) == 0 {
		return Reply{}, "", fmt.Errorf("no providers configured")
	}
	return Reply{}, "", t.all
}

// UnknownModelError says the model list in force has no model of that name:
// a job queued before an edit of the models file removed its model.
type UnknownModelError struct{ Model string }

func (e *UnknownModelError) Error() string {
	return fmt.Sprintf("the model %q is not served (not in the models file)", e.Model)
}

// try is what the deployments tried so far came to.
type try struct {
	all         *AllDownError
	capacity    *CapacityError           // the earliest capacity among those at their limit
	every       map[string]time.Duration // each busy deployment's rate interval (CapacityError.Every)
	unsupported string                   // the first deployment's reason it could not carry the request
}

// group tries one public model's deployments; done when one answered or
// the attempt must end.
func (t *try) group(ctx context.Context, g *Group, req Request, rename bool, onDelta func(Delta) error) (Reply, string, error, bool) {
	order := weightedOrder(g.Links, g.Weights)
	// With more than one deployment of a model, none waits in place for
	// capacity while another may have it now; the first to have it is then
	// waited for. The variables' chain (no weights) waits for its primary
	// before a fallback is asked, as it always did.
	inline := len(order) > 1 && g.Weights != nil
	var busy []Provider
	for i, p := range order {
		if cr, ok := p.(Carrier); ok {
			if f := cr.Unsupported(req); f != "" {
				t.unsupported = cmp.Or(t.unsupported, f) // the first's reason is the one to tell
				continue
			}
		}
		preq := req
		if !rename || i > 0 || g.Weights != nil {
			preq.Model = "" // each deployment asks for its own model
		}
		callCtx := ctx
		if inline {
			callCtx = withInlineWait(ctx, 0)
		}
		reply, err, done := t.call(callCtx, p, preq, onDelta)
		if done {
			return reply, p.Name(), err, true
		}
		if busyErr := (*CapacityError)(nil); errors.As(err, &busyErr) {
			busy = append(busy, p)
		}
	}
	if inline && len(busy) > 0 {
		return t.waitForOne(ctx, g, busy, req, onDelta)
	}
	return Reply{}, "", nil, false
}

// waitForOne waits in place, as a single deployment would, for whichever of
// a model's busy deployments has capacity first. It asks as a single
// deployment's own wait polls (one limiter call, then a pause that grows
// from 10 ms to maxPause), each time of a deployment drawn by weight: the
// calls waiting on a model spread over its deployments as their rates do,
// and none stays tied to one while another frees. A call that fits a
// rate's next opening within the pause reserves it. It gives up when the
// longest a call may wait in place has passed; a deployment that fails
// drops out. Done as call is.
func (t *try) waitForOne(ctx context.Context, g *Group, busy []Provider, req Request, onDelta func(Delta) error) (Reply, string, error, bool) {
	var budget time.Duration
	weights := make([]float64, len(busy))
	for i, p := range busy {
		if gd, ok := p.(*Guarded); ok && gd.cap != nil {
			budget = max(budget, gd.cap.set.MaxInlineWait)
		}
		weights[i] = 1
		if j := slices.Index(g.Links, p); j >= 0 && g.Weights != nil {
			weights[i] = g.Weights[j]
		}
	}
	req.Model = "" // each deployment asks for its own model
	deadline := time.Now().Add(budget)
	pause := 10 * time.Millisecond
	for len(busy) > 0 {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		i := weightedPick(weights)
		p := busy[i]
		wait := min(pause, left)
		reply, err, done := t.call(withPolling(withInlineWait(ctx, wait), wait), p, req, onDelta)
		if done {
			return reply, p.Name(), err, true
		}
		if !errors.As(err, new(*CapacityError)) {
			busy, weights = slices.Delete(busy, i, i+1), slices.Delete(weights, i, i+1)
			continue
		}
		select {
		case <-ctx.Done():
			return Reply{}, p.Name(), ctx.Err(), true
		case <-time.After(min(pause+time.Duration(rand.Int64N(int64(pause/10)+1)), left)): // spread the herd
		}
		pause = min(2*pause, maxPause)
	}
	if len(busy) == 0 {
		t.capacity = nil // every one failed: the fallbacks may answer
	}
	return Reply{}, "", nil, false
}

// maxPause bounds the pause between two asks of a call waiting for a
// model's capacity: shorter than a single deployment's 500 ms, so that the
// last calls of a burst, spread over several deployments, do not linger.
const maxPause = 200 * time.Millisecond

// weightedPick is an index drawn in proportion to weights.
func weightedPick(weights []float64) int {
	var sum float64
	for _, w := range weights {
		sum += w
	}
	x := rand.Float64() * sum
	for i, w := range weights {
		if x < w {
			return i
		}
		x -= w
	}
	return len(weights) - 1
}

// call makes one deployment's call; done when it answered or the attempt
// must end; otherwise its error is counted in t.
func (t *try) call(ctx context.Context, p Provider, req Request, onDelta func(Delta) error) (Reply, error, bool) {
	emitted := false
	reply, err := p.Stream(ctx, req, func(d Delta) error { emitted = true; return onDelta(d) })
	if err == nil {
		return reply, nil, true
	}
	var open *ErrOpen
	var busy *CapacityError
	switch {
	case errors.As(err, &busy):
		// At capacity: another deployment may answer now; if none does,
		// the job waits for the earliest capacity instead of degrading.
		if t.capacity == nil || busy.Until.Before(t.capacity.Until) {
			t.capacity = busy
		}
		if busy.Every > 0 {
			if t.every == nil {
				t.every = map[string]time.Duration{}
			}
			t.every[p.Name()] = busy.Every
		}
		return Reply{}, err, false
	case errors.As(err, &open):
		if t.all.Until.IsZero() || open.Until.Before(t.all.Until) {
			t.all.Until = open.Until
		}
	case emitted, ctx.Err() != nil, !Retryable(err):
		return Reply{}, err, true
	default:
		t.all.AllOpen = false
	}
	t.all.Errs = append(t.all.Errs, err)
	return Reply{}, err, false
}

// weightedOrder is links in a random order where each comes first in
// proportion to its weight (each next one likewise among the rest); nil
// weights keep the given order.
func weightedOrder(links []Provider, weights []float64) []Provider {
	if weights == nil || len(links) < 2 {
		return links
	}
	type keyed struct {
		p   Provider
		key float64
	}
	ks := make([]keyed, len(links))
	for i, p := range links {
		// Efraimidis and Spirakis: u^(1/w) sorted descending draws without
		// replacement in proportion to w.
		ks[i] = keyed{p, math.Pow(rand.Float64(), 1/weights[i])}
	}
	slices.SortFunc(ks, func(a, b keyed) int { return cmp.Compare(b.key, a.key) })
	out := make([]Provider, len(ks))
	for i, k := range ks {
		out[i] = k.p
	}
	return out
}

type inlineWaitKey struct{}

// withInlineWait bounds how long a call may wait in place for its
// deployment's capacity (CapacitySettings.MaxInlineWait otherwise).
func withInlineWait(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, inlineWaitKey{}, d)
}

type pollKey struct{}

// withPolling starts a call's wait for a slot at polls of d (10 ms
// otherwise): a caller that paces its own asks needs no faster ones.
func withPolling(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, pollKey{}, d)
}

func firstPoll(ctx context.Context) time.Duration {
	if d, ok := ctx.Value(pollKey{}).(time.Duration); ok && d > 0 {
		return d
	}
	return 10 * time.Millisecond
}

func inlineWait(ctx context.Context, def time.Duration) time.Duration {
	if d, ok := ctx.Value(inlineWaitKey{}).(time.Duration); ok {
		return d
	}
	return def
}
