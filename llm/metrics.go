package llm

import (
	"cmp"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// Metrics are the provider-side series. Labels are bounded: provider names
// come from configuration, models from configuration or the upstream's answer.
type Metrics struct {
	requests *prometheus.CounterVec
	tokensC  *prometheus.CounterVec
	state    *prometheus.GaugeVec
	waitH    *prometheus.HistogramVec
	limited  *prometheus.CounterVec
	inflight *prometheus.GaugeVec
	limit    *prometheus.GaugeVec
	costC    *prometheus.CounterVec
	limErrs  *prometheus.CounterVec
	prices   atomic.Pointer[map[string][2]float64] // dollars per million input and output tokens, by model
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
	m.waitH = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "chatfleet_llm_capacity_wait_seconds", Help: "Time a call waited for the provider's quota (RPM, TPM, concurrency, a Retry-After pause), in place.",
		Buckets: []float64{0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	}, []string{"provider"})
	m.limited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chatfleet_llm_rate_limited_total", Help: "429 and overloaded answers from the provider (capacity signals, not breaker failures).",
	}, []string{"provider"})
	m.inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "chatfleet_llm_inflight", Help: "Calls in flight to the provider from this process.",
	}, []string{"provider"})
	m.limit = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "chatfleet_llm_limit", Help: "The provider's fleet-wide limit by kind: rpm, tpm and concurrency as configured (concurrency learned from 429s when nothing is configured), rpm_effective the request rate kept to now (the configured one less the margin, lowered by 429s while it recovers); 0 is none.",
	}, []string{"provider", "kind"})
	m.costC = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chatfleet_llm_cost_usd_total", Help: "What the tokens used cost in US dollars at CHATFLEET_MODEL_PRICES, by provider and model (models with a price only).",
	}, []string{"provider", "model"})
	m.limErrs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chatfleet_llm_limiter_errors_total", Help: "Calls that went ahead without the provider's fleet-wide quota because the limiter's script failed (Redis unreachable, out of memory, read-only during a failover): the limiter fails open.",
	}, []string{"provider"})
	reg.MustRegister(m.requests, m.tokensC, m.state, m.waitH, m.limited, m.inflight, m.limit, m.costC, m.limErrs)
	for i, name := range ProviderNames(chain) {
		for _, o := range outcomes {
			m.requests.WithLabelValues(name, o)
		}
		model := chain[i].Model
		if model == "" && chain[i].Kind == "sim" {
			model = "sim"
		}
		if model != "" {
			m.tokens(name, model, model, Usage{})
		}
		m.state.WithLabelValues(name).Set(0)
		m.waitH.WithLabelValues(name)
		m.limited.WithLabelValues(name)
		m.inflight.WithLabelValues(name)
		m.limErrs.WithLabelValues(name)
		m.limits(name, chain[i].Limits)
	}
	return m
}

func (m *Metrics) request(provider, outcome string) {
	if m != nil {
		m.requests.WithLabelValues(provider, outcome).Inc()
	}
}

// tokens counts a call's tokens under the deployment's model, and their
// cost under priced: the model its price is kept by.
func (m *Metrics) tokens(provider, model, priced string, u Usage) {
	if m == nil {
		return
	}
	m.tokensC.WithLabelValues(provider, model, "prompt").Add(float64(u.PromptTokens))
	m.tokensC.WithLabelValues(provider, model, "completion").Add(float64(u.CompletionTokens))
	if prices := m.prices.Load(); prices != nil {
		if p, ok := (*prices)[priced]; ok {
			m.costC.WithLabelValues(provider, priced).Add((float64(u.PromptTokens)*p[0] + float64(u.CompletionTokens)*p[1]) / 1e6)
		}
	}
}

// Price sets the models' prices (dollars per million input and output
// tokens) that chatfleet_llm_cost_usd_total counts with, by public model
// with a models file (else by the deployment's model); again when the list
// changes.
func (m *Metrics) Price(prices map[string][2]float64, chain []Spec) {
	m.prices.Store(&prices)
	for i, name := range ProviderNames(chain) {
		if k := priceKey(chain[i]); hasPrice(prices, k) {
			m.costC.WithLabelValues(name, k)
		}
	}
}

func hasPrice(prices map[string][2]float64, model string) bool {
	_, ok := prices[model]
	return ok
}

// priceKey is the model a deployment's use is priced by: its public model
// with a models file, else (the variables' chain) its own model.
func priceKey(s Spec) string { return cmp.Or(s.Public, s.Model) }

// forget drops the gauges of a deployment an edit removed, so that its last
// state (an open breaker) does not stay on the dashboards and alerts.
func (m *Metrics) forget(provider string) {
	if m == nil {
		return
	}
	m.state.DeleteLabelValues(provider)
	m.inflight.DeleteLabelValues(provider)
	m.limit.DeletePartialMatch(prometheus.Labels{"provider": provider})
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

func (m *Metrics) capacityWait(provider string, d time.Duration) {
	if m != nil {
		m.waitH.WithLabelValues(provider).Observe(d.Seconds())
	}
}

func (m *Metrics) rateLimited(provider string) {
	if m != nil {
		m.limited.WithLabelValues(provider).Inc()
	}
}

func (m *Metrics) limiterError(provider string) {
	if m != nil {
		m.limErrs.WithLabelValues(provider).Inc()
	}
}

func (m *Metrics) inflightAdd(provider string, n float64) {
	if m != nil {
		m.inflight.WithLabelValues(provider).Add(n)
	}
}

func (m *Metrics) limits(provider string, l Limits) {
	if m == nil {
		return
	}
	m.limit.WithLabelValues(provider, "rpm").Set(float64(l.RPM))
	m.limit.WithLabelValues(provider, "tpm").Set(float64(l.TPM))
	m.limit.WithLabelValues(provider, "concurrency").Set(float64(l.Concurrency))
}

// effectiveRPM shows the request rate the fleet keeps to now: the configured
// one less the margin, lowered by 429s while it recovers.
func (m *Metrics) effectiveRPM(provider string, n int) {
	if m != nil {
		m.limit.WithLabelValues(provider, "rpm_effective").Set(float64(n))
	}
}

// learned shows the concurrency limit learned from 429s (0: none yet).
func (m *Metrics) learned(provider string, n int) {
	if m != nil {
		m.limit.WithLabelValues(provider, "concurrency").Set(float64(n))
	}
}
