package webhooks

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	deliveries *prometheus.CounterVec
	seconds    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatfleet_webhook_deliveries_total",
			Help: "Webhook delivery attempts by outcome: delivered, failed (retried), rate_limited (429, retried), refused (address or scheme not allowed: not contacted), expired (failed past the retry period: archived).",
		}, []string{"outcome"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chatfleet_webhook_delivery_seconds", Help: "Time of one webhook delivery attempt.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}),
	}
	for _, o := range []string{outcomeDelivered, outcomeFailed, outcomeRateLimited, outcomeRefused, outcomeExpired} {
		m.deliveries.WithLabelValues(o)
	}
	reg.MustRegister(m.deliveries, m.seconds)
	return m
}

func (m *metrics) outcome(o string) { m.deliveries.WithLabelValues(o).Inc() }
