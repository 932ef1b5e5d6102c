package llm

import (
	"context"
	"errors"
	"math"
	"sync/atomic"
	"testing"
	"time"
)

// scripted answers as its fields say: an error, or a reply echoing the
// model it was asked for.
type scripted struct {
	name  string
	err   error
	calls atomic.Int32
	asked atomic.Value // the request's model of the last call
}

func (s *scripted) Name() string { return s.name }

func (s *scripted) Stream(_ context.Context, req Request, onDelta func(Delta) error) (Reply, error) {
	s.calls.Add(1)
	s.asked.Store(req.Model)
	if s.err != nil {
		return Reply{}, s.err
	}
	_ = onDelta(Delta{Text: "hi"})
	return Reply{Content: "hi from " + s.name, Model: "dated-snapshot", Asked: req.Model}, nil
}

func router(def string, groups ...*Group) *Chain {
	c := &Chain{}
	c.set(def, groups, false)
	return c
}

func down(name string) *scripted {
	return &scripted{name: name, err: &Error{Provider: name, Status: 500, Retryable: true, Msg: "upstream 500"}}
}

func busy(name string, in time.Duration) *scripted {
	return &scripted{name: name, err: &CapacityError{Provider: name, Until: time.Now().Add(in), Reason: "rpm"}}
}

func noDeltas(Delta) error { return nil }

// Each deployment comes first in proportion to its weight.
func TestWeightedOrderFollowsTheWeights(t *testing.T) {
	a, b := &scripted{name: "a"}, &scripted{name: "b"}
	first := map[string]int{}
	const n = 20000
	for range n {
		first[weightedOrder([]Provider{a, b}, []float64{3, 1})[0].Name()]++
	}
	if share := float64(first["a"]) / n; math.Abs(share-0.75) > 0.02 {
		t.Fatalf("a came first %.3f of the time, want 0.75 (weights 3:1)", share)
	}
}

// A deployment that fails before its first token hands the call to another
// deployment of the model; when all fail, the fallback model answers, and
// the reply names the public model that answered.
func TestRouterFailsOverThenFallsBack(t *testing.T) {
	bad1, good := down("alpha-1"), &scripted{name: "alpha-2"}
	c := router("alpha",
		&Group{Name: "alpha", Links: []Provider{bad1, good}, Weights: []float64{1, 1}, Fallbacks: []string{"beta"}},
		&Group{Name: "beta", Links: []Provider{&scripted{name: "beta-1"}}, Weights: []float64{1}})
	for range 20 {
		reply, dep, err := c.Stream(context.Background(), Request{Model: "alpha"}, noDeltas)
		if err != nil || dep != "alpha-2" || reply.Model != "alpha" || reply.Asked != "alpha" {
			t.Fatalf("reply %+v from %q, %v; want alpha-2 answering as alpha", reply, dep, err)
		}
	}
	if good.asked.Load() != "" {
		t.Fatalf("a deployment was asked for %q; each asks for its own model", good.asked.Load())
	}

	c = router("alpha",
		&Group{Name: "alpha", Links: []Provider{down("alpha-1"), down("alpha-2")}, Weights: []float64{1, 1}, Fallbacks: []string{"beta"}},
		&Group{Name: "beta", Links: []Provider{&scripted{name: "beta-1"}}, Weights: []float64{1}})
	reply, dep, err := c.Stream(context.Background(), Request{}, noDeltas)
	if err != nil || dep != "beta-1" || reply.Model != "beta" || reply.Asked != "beta" {
		t.Fatalf("reply %+v from %q, %v; want the fallback beta", reply, dep, err)
	}

	// The whole list down: every error, for the degraded reply or a retry.
	c = router("alpha",
		&Group{Name: "alpha", Links: []Provider{down("alpha-1")}, Weights: []float64{1}, Fallbacks: []string{"beta"}},
		&Group{Name: "beta", Links: []Provider{down("beta-1")}, Weights: []float64{1}})
	var all *AllDownError
	if _, _, err := c.Stream(context.Background(), Request{}, noDeltas); !errors.As(err, &all) || len(all.Errs) != 2 || all.AllOpen {
		t.Fatalf("%v, want both failures", err)
	}
}

// When the model's deployments are at capacity, the job waits for the
// first to have it: no fallback is called.
func TestRouterWaitsForCapacityRatherThanFallBack(t *testing.T) {
	fb := &scripted{name: "beta-1"}
	c := router("alpha",
		&Group{Name: "alpha", Links: []Provider{busy("alpha-1", 3*time.Second), busy("alpha-2", time.Second)}, Weights: []float64{1, 1}, Fallbacks: []string{"beta"}},
		&Group{Name: "beta", Links: []Provider{fb}, Weights: []float64{1}})
	_, _, err := c.Stream(context.Background(), Request{Model: "alpha"}, noDeltas)
	var ce *CapacityError
	if !errors.As(err, &ce) || ce.Provider != "alpha-2" {
		t.Fatalf("%v, want to wait for alpha-2, the first with capacity", err)
	}
	if fb.calls.Load() != 0 {
		t.Fatal("the fallback was called while the model's deployments were only at capacity")
	}
}

// A name that is not served (removed by an edit while its job waited) is
// refused without a call, and not retried.
func TestRouterRefusesAnUnknownModel(t *testing.T) {
	a := &scripted{name: "alpha-1"}
	c := router("alpha", &Group{Name: "alpha", Links: []Provider{a}, Weights: []float64{1}})
	_, _, err := c.Stream(context.Background(), Request{Model: "gamma"}, noDeltas)
	var ue *UnknownModelError
	if !errors.As(err, &ue) || ue.Model != "gamma" || Retryable(err) || a.calls.Load() != 0 {
		t.Fatalf("%v, want an unknown model, not retried, and no call", err)
	}
}

// Without the models file, any name renames the primary's model, and the
// fallbacks use their own, in order.
func TestLegacyChainRenamesThePrimary(t *testing.T) {
	p, fb := down("openai"), &scripted{name: "anthropic"}
	c := NewChain(p, fb)
	reply, dep, err := c.Stream(context.Background(), Request{Model: "gpt-x"}, noDeltas)
	if err != nil || dep != "anthropic" || p.asked.Load() != "gpt-x" || fb.asked.Load() != "" || reply.Model != "dated-snapshot" {
		t.Fatalf("reply %+v from %q, %v; primary asked %q, fallback %q", reply, dep, err, p.asked.Load(), fb.asked.Load())
	}
}

// inlineSeen records how long each call was allowed to wait in place for
// capacity (-1: the deployment's own bound).
type inlineSeen struct {
	scripted
	seen []time.Duration
}

func (s *inlineSeen) Stream(ctx context.Context, req Request, onDelta func(Delta) error) (Reply, error) {
	s.seen = append(s.seen, inlineWait(ctx, -1))
	return s.scripted.Stream(ctx, req, onDelta)
}

// The variables' chain waits in place for its primary's capacity before a
// fallback is asked, as it always did; a model's deployments first look
// for one with capacity now.
func TestOnlyAModelsDeploymentsSkipAWaitForCapacity(t *testing.T) {
	primary := &inlineSeen{scripted: scripted{name: "openai"}}
	NewChain(primary, &scripted{name: "anthropic"}).Stream(context.Background(), Request{Model: "gpt-x"}, noDeltas)
	if len(primary.seen) != 1 || primary.seen[0] != -1 || primary.asked.Load() != "gpt-x" {
		t.Fatalf("legacy primary allowed %v, asked for %q; want its own bound and the request's model", primary.seen, primary.asked.Load())
	}
	a, b := &inlineSeen{scripted: scripted{name: "a"}}, &inlineSeen{scripted: scripted{name: "b"}}
	router("m", &Group{Name: "m", Links: []Provider{a, b}, Weights: []float64{1, 1}}).Stream(context.Background(), Request{}, noDeltas)
	if seen := append(a.seen, b.seen...); len(seen) != 1 || seen[0] != 0 {
		t.Fatalf("a model's deployment allowed %v, want one call that does not wait in place", seen)
	}
}
