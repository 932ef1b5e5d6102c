package llm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/tracing"
)

// Spec is one provider of the chain.
type Spec struct {
	Kind    string // openai, anthropic or sim
	Model   string
	BaseURL string
	APIKey  string
	Limits  Limits // the provider's fleet-wide quota
}

// ChainOptions describe a provider chain.
type ChainOptions struct {
	Specs    []Spec    // primary first
	Sim      SimConfig // settings of sim providers (Name is set per provider)
	Breaker  BreakerSettings
	Capacity CapacitySettings
	Timeouts Timeouts
}

// Build makes the provider chain, primary first, each provider behind its
// fleet-wide breaker, refreshed until ctx ends. Provider names (metric labels,
// breaker keys) are the kind, or kind-N (N its place in the chain) when a
// kind appears twice.
func Build(ctx context.Context, opt ChainOptions, rdb redis.UniversalClient, m *Metrics, log zerolog.Logger) (*Chain, error) {
	names := ProviderNames(opt.Specs)
	var hc *http.Client // the SDKs' default
	if tracing.Enabled() {
		// Each call is a client span, and the provider gets its traceparent.
		hc = &http.Client{Transport: otelhttp.NewTransport(http.DefaultTransport)}
	}
	var links []Provider
	for i, s := range opt.Specs {
		name := names[i]
		var p Provider
		switch s.Kind {
		case "openai":
			p = NewOpenAI(name, s.BaseURL, s.APIKey, s.Model, hc)
		case "anthropic":
			p = NewAnthropic(name, s.BaseURL, s.APIKey, s.Model, hc)
		case "sim":
			sim := opt.Sim
			sim.Name = name
			p = NewSim(sim)
		default:
			return nil, fmt.Errorf("provider %d: unknown kind %q", i+1, s.Kind)
		}
		g, err := NewGuarded(ctx, p, rdb, opt.Breaker, m, log)
		if err != nil {
			return nil, err
		}
		// The simulated provider never answers 429: it has nothing to learn,
		// so it is limited only when limits are configured.
		if s.Kind != "sim" || s.Limits != (Limits{}) {
			g.cap = newCapacity(name, rdb, s.Limits, opt.Capacity, m, log)
		}
		g.timeouts = opt.Timeouts
		g.kind = s.Kind
		g.model = s.Model
		if g.model == "" {
			g.model = s.Kind
		}
		links = append(links, g)
	}
	return NewChain(links...), nil
}

// ProviderNames are the chain's provider names, primary first.
func ProviderNames(specs []Spec) []string {
	kinds := map[string]int{}
	for _, s := range specs {
		kinds[s.Kind]++
	}
	names := make([]string, len(specs))
	for i, s := range specs {
		names[i] = s.Kind
		if kinds[s.Kind] > 1 {
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
