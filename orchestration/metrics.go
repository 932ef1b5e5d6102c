package orchestration

import (
	"context"

	"github.com/chatfleet/chatfleet/internal/tracing"
	"github.com/chatfleet/chatfleet/tasks"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the worker's job series. No label holds a job, session or tenant id.
type Metrics struct {
	jobs               *prometheus.CounterVec
	degraded           *prometheus.CounterVec
	duration           prometheus.Histogram
	ttft               prometheus.Histogram
	queueWait          *prometheus.HistogramVec
	active             prometheus.Gauge
	historyUnavailable prometheus.Counter
}

// latencyBuckets spans 5 ms to about 2 minutes.
var latencyBuckets = prometheus.ExponentialBuckets(0.005, 2, 15)

// NewMetrics registers the job metrics on reg (nil: not exposed).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatfleet_jobs_total", Help: "Finished jobs by outcome (succeeded, failed, canceled, degraded).",
		}, []string{"outcome"}),
		degraded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatfleet_degraded_replies_total", Help: "Jobs answered with the degraded reply, by reason (all_open, all_failed).",
		}, []string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chatfleet_job_duration_seconds", Help: "Start of work to done.", Buckets: latencyBuckets,
		}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chatfleet_time_to_first_token_seconds", Help: "Submit to first token.", Buckets: latencyBuckets,
		}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "chatfleet_queue_wait_seconds", Help: "Submit to start of work, by priority.", Buckets: latencyBuckets,
		}, []string{"priority"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatfleet_active_jobs", Help: "Jobs being worked on now by this process.",
		}),
		historyUnavailable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatfleet_history_unavailable_total", Help: "Jobs run without their session history because Redis could not give it.",
		}),
	}
	reg.MustRegister(m.jobs, m.degraded, m.duration, m.ttft, m.queueWait, m.active, m.historyUnavailable)
	// Known label values start at zero, so that every series exists from the
	// start (a rate() over a series that appears later misses its first step).
	for _, o := range []string{"succeeded", "failed", "canceled", "degraded"} {
		m.jobs.WithLabelValues(o)
	}
	for _, r := range []string{"all_open", "all_failed"} {
		m.degraded.WithLabelValues(r)
	}
	for _, p := range tasks.Priorities {
		m.queueWait.WithLabelValues(p)
	}
	return m
}

// observe records v, with the job's trace id as the exemplar when tracing
// is on: a dashboard's latency panel then links to the trace of a slow job.
func observe(ctx context.Context, h prometheus.Histogram, v float64) {
	if id, _ := tracing.IDs(ctx); id != "" {
		if eo, ok := h.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(v, prometheus.Labels{"trace_id": id})
			return
		}
	}
	h.Observe(v)
}
