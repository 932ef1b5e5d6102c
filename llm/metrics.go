package llm

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Metrics are the provider-side series. Labels are bounded: provider names
// come from configuration, models from configuration or the upstream's answer.
type Metrics struct {
	requests *prometheus.CounterVec
	tokensC  *prometheus.CounterVec
	state    *prometheus.GaugeVec
}

// outcomes are the values of chatfleet_llm_requests_total's outcome label.
var outcomes = []string{"success", "error", "rejected", "open", "canceled", "aborted"}

// NewMetrics registers the provider metrics on reg (nil: not exposed). The
// series of the chain's providers start at zero, so that dashboards and rate()
// see them before the first call.
func NewMetrics(reg prometheus.Registerer, chain []Spec) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatfleet_llm_requests_total", Help: "Provider calls by outcome (success, error, rejected, open, canceled, aborted).",
		}, []string{"provider", "outcome"}),
		tokensC: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatfleet_llm_tokens_total", Help: "Tokens used, by provider, model and kind (prompt, completion).",
		}, []string{"provider", "model", "kind"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "chatfleet_breaker_state", Help: "Circuit breaker state per provider: 0 closed, 1 open, 2 half-open.",
		}, []string{"provider"}),
	}
	reg.MustRegister(m.requests, m.tokensC, m.state)
	for i, name := range ProviderNames(chain) {
		for _, o := range outcomes {
			m.requests.WithLabelValues(name, o)
		}
		model := chain[i].Model
		if model == "" && chain[i].Kind == "sim" {
			model = "sim"
		}
		if model != "" {
			m.tokens(name, model, Usage{})
		}
		m.state.WithLabelValues(name).Set(0)
	}
	return m
}

func (m *Metrics) request(provider, outcome string) {
	if m != nil {
		m.requests.WithLabelValues(provider, outcome).Inc()
	}
}

func (m *Metrics) tokens(provider, model string, u Usage) {
	if m == nil {
		return
	}
	m.tokensC.WithLabelValues(provider, model, "prompt").Add(float64(u.PromptTokens))
	m.tokensC.WithLabelValues(provider, model, "completion").Add(float64(u.CompletionTokens))
}

func (m *Metrics) breaker(provider string, s gobreaker.State) {
	if m == nil {
		return
	}
	v := 0.0
	switch s {
	case gobreaker.StateOpen:
		v = 1
	case gobreaker.StateHalfOpen:
		v = 2
	}
	m.state.WithLabelValues(provider).Set(v)
}
