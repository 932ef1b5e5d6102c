package llm

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/tracing"
	"github.com/chatfleet/chatfleet/models"
)

// Spec is one deployment: a provider, its model and its quota.
type Spec struct {
	ID      string // its name in metrics, logs and breaker keys; empty: ProviderNames decides
	Public  string // the public model it serves, when a models file lists it
	Kind    string // openai, anthropic or sim
	Model   string
	BaseURL string
	APIKey  string
	Limits  Limits // the deployment's fleet-wide quota
}

// ChainOptions describe how every deployment is called.
type ChainOptions struct {
	Sim      SimConfig // settings of sim providers (Name is set per provider)
	Breaker  BreakerSettings
	Capacity CapacitySettings
	Timeouts Timeouts
}

// Specs are the deployments of a model set, model by model, in the order
// ProviderNames names them.
func Specs(set *models.Set) []Spec {
	var out []Spec
	for _, m := range set.Models {
		for _, d := range m.Deployments {
			public := m.Name
			if set.Legacy {
				public = ""
			}
			out = append(out, Spec{ID: d.ID, Public: public, Kind: d.Provider, Model: d.Model, BaseURL: d.BaseURL, APIKey: d.APIKey,
				Limits: Limits{RPM: d.RPM, TPM: d.TPM, Concurrency: d.Concurrency}})
		}
	}
	return out
}

// Build makes the router of a model set: each deployment behind its
// fleet-wide breaker, refreshed until ctx ends or an Update drops it.
func Build(ctx context.Context, set *models.Set, opt ChainOptions, rdb redis.UniversalClient, m *Metrics, log zerolog.Logger) (*Chain, error) {
	c := &Chain{built: &builder{ctx: ctx, opt: opt, rdb: rdb, m: m, log: log, live: map[string]*deployment{}}}
	if err := c.Update(set); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// builder makes and keeps the deployments of a Chain across updates.
type builder struct {
	ctx  context.Context
	opt  ChainOptions
	rdb  redis.UniversalClient
	m    *Metrics
	log  zerolog.Logger
	mu   sync.Mutex
	live map[string]*deployment // by name
}

type deployment struct {
	spec   Spec
	g      *Guarded
	cancel context.CancelFunc
}

// Update puts a new model set in force. A deployment whose spec is
// unchanged keeps its state; one that is gone stops refreshing its breaker.
// Calls under way finish on what they started with.
func (c *Chain) Update(set *models.Set) error {
	b := c.built
	b.mu.Lock()
	defer b.mu.Unlock()
	specs := Specs(set)
	names := ProviderNames(specs)
	next := make(map[string]*deployment, len(specs))
	var groups []*Group
	i := 0
	for _, mdl := range set.Models {
		g := &Group{Name: mdl.Name, Fallbacks: mdl.Fallbacks}
		if !set.Legacy {
			g.Weights = []float64{}
		}
		for _, d := range mdl.Deployments {
			spec, name := specs[i], names[i]
			i++
			dep, ok := b.live[name]
			if !ok || dep.spec != spec || dep.g.public != mdl.Name {
				var err error
				if dep, err = b.make(name, mdl.Name, spec); err != nil {
					for n, d := range next {
						if b.live[n] != d {
							d.cancel()
						}
					}
					return err
				}
			}
			next[name] = dep
			g.Links = append(g.Links, dep.g)
			if g.Weights != nil {
				g.Weights = append(g.Weights, cmp.Or(d.Weight, 1))
			}
		}
		groups = append(groups, g)
	}
	for n, d := range b.live {
		if next[n] != d {
			d.cancel()
			if _, kept := next[n]; !kept {
				b.m.forget(n)
			}
		}
	}
	b.live = next
	c.set(set.Default, groups, set.Legacy)
	return nil
}

// Close stops every deployment's breaker refresh.
func (c *Chain) Close() {
	if c.built == nil {
		return
	}
	c.built.mu.Lock()
	defer c.built.mu.Unlock()
	for _, d := range c.built.live {
		d.cancel()
	}
	c.built.live = map[string]*deployment{}
}

// make builds deployment name of the public model public.
func (b *builder) make(name, public string, s Spec) (*deployment, error) {
	var hc *http.Client // the SDKs' default
	if tracing.Enabled() {
		// Each call is a client span, and the provider gets its traceparent.
		hc = &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport)}
	}
	var p Provider
	switch s.Kind {
	case "openai":
		p = NewOpenAI(name, s.BaseURL, s.APIKey, s.Model, hc)
	case "anthropic":
		p = NewAnthropic(name, s.BaseURL, s.APIKey, s.Model, hc)
	case "sim":
		sim := b.opt.Sim
		sim.Name = name
		p = NewSim(sim)
	default:
		return nil, fmt.Errorf("deployment %s: unknown provider %q", name, s.Kind)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	g, err := NewGuarded(ctx, p, b.rdb, b.opt.Breaker, b.m, b.log)
	if err != nil {
		cancel()
		return nil, err
	}
	// The simulated provider never answers 429: it has nothing to learn,
	// so it is limited only when limits are configured.
	if s.Kind != "sim" || s.Limits != (Limits{}) {
		g.cap = newCapacity(name, b.rdb, s.Limits, b.opt.Capacity, b.m, b.log)
	}
	g.timeouts = b.opt.Timeouts
	g.kind = s.Kind
	g.model = cmp.Or(s.Model, s.Kind)
	g.public = public
	g.priced = cmp.Or(priceKey(s), g.model)
	return &deployment{spec: s, g: g, cancel: cancel}, nil
}

// ProviderNames are the deployments' names: their ID, else (the chain of
// the CHATFLEET_LLM_* variables) the kind, or kind-N (N its place in the
// chain) when a kind appears twice.
func ProviderNames(specs []Spec) []string {
	kinds := map[string]int{}
	for _, s := range specs {
		kinds[s.Kind]++
	}
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Kind
		if s.ID != "" {
			names[i] = s.ID
		} else if kinds[s.Kind] > 1 {
			names[i] = fmt.Sprintf("%s-%d", s.Kind, i+1)
		}
	}
	return names
}

// BreakerStates reads each provider's fleet-wide breaker state (closed, open,
// half-open) from Redis, for health reports.
func BreakerStates(ctx context.Context, rdb redis.UniversalClient, names []string) (map[string]string, error) {
	out := make(map[string]string, len(names))
	for _, n := range names {
		raw, err := rdb.Get(ctx, rkeys.Breaker(sharedStateName(n))).Bytes()
		if errors.Is(err, redis.Nil) {
			out[n] = gobreaker.StateClosed.String()
			continue
		}
		if err != nil {
			return nil, err
		}
		var s gobreaker.SharedState
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		st := s.State
		if st == gobreaker.StateOpen && !s.Expiry.IsZero() && !time.Now().Before(s.Expiry) {
			st = gobreaker.StateHalfOpen
		}
		out[n] = st.String()
	}
	return out, nil
}
