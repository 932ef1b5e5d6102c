package llm

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/config"
)

// FromConfig builds the provider chain, primary first, each provider behind
// its fleet-wide breaker. Provider names (metric labels, breaker keys) are the
// kind, or kind-N (N its place in the chain) when a kind appears twice.
func FromConfig(ctx context.Context, cfg config.Config, rdb redis.UniversalClient, m *Metrics, log zerolog.Logger) (*Chain, error) {
	specs := append([]config.ProviderSpec{cfg.Primary()}, cfg.Fallbacks...)
	kinds := map[string]int{}
	for _, s := range specs {
		kinds[s.Kind]++
	}
	set := BreakerSettings{Failures: cfg.BreakerFailures, OpenFor: cfg.BreakerOpenFor}
	var links []Provider
	for i, s := range specs {
		name := s.Kind
		if kinds[s.Kind] > 1 {
			name = fmt.Sprintf("%s-%d", s.Kind, i+1)
		}
		var p Provider
		switch s.Kind {
		case "openai":
			p = NewOpenAI(name, s.BaseURL, s.APIKey, s.Model, nil)
		case "anthropic":
			p = NewAnthropic(name, s.BaseURL, s.APIKey, s.Model, nil)
		default:
			p = NewSim(SimConfig{Name: name, Latency: cfg.SimLatency, TokenDelay: cfg.SimTokenDelay, Tokens: cfg.SimTokens, FailRate: cfg.SimFailRate})
		}
		g, err := NewGuarded(ctx, p, rdb, set, m, log)
		if err != nil {
			return nil, err
		}
		links = append(links, g)
	}
	return NewChain(links...), nil
}
