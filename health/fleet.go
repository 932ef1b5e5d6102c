package health

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Fleet reports on the whole fleet from Redis: the queues, the live workers,
// the breakers. The API serves it; its numbers are the same from every API
// process, so dashboards aggregate them with max, not sum.
type Fleet struct {
	rdb       redis.UniversalClient
	insp      *asynq.Inspector
	threshold int
	queues    map[string]int
	version   string
	started   time.Time
	breakers  func(context.Context) (map[string]string, error)
	saturated func(context.Context) ([]string, error)
	deploys   func(context.Context) (any, error)
	scheduler func(context.Context) (store.SchedBacklog, int, error)

	mu      sync.Mutex
	samples []sample // jobs handed out so far, over the last minute, oldest first
	cached  snapshot
	cacheAt time.Time
}

type sample struct {
	at     time.Time
	handed int
}

// FleetOptions configures Fleet.
type FleetOptions struct {
	Threshold int // backlog above which queue status is warning
	// Queues are the queues to report (default tasks.Queues; more when each
	// priority is spread over several).
	Queues  map[string]int
	Version string
	// Breakers reads each provider's breaker state.
	Breakers func(context.Context) (map[string]string, error)
	// Saturated describes the providers whose capacity holds jobs back now
	// (e.g. "openai is at its limit of 500 requests per minute").
	Saturated func(context.Context) ([]string, error)
	// Deployments reads each deployment's state (breaker, quota use,
	// effective rate) for /health/detailed's deployments list; any value
	// that encodes as a JSON list.
	Deployments func(context.Context) (any, error)
	// Scheduler reads what waits in the scheduler, and how many jobs wait
	// for their session's turn.
	Scheduler func(context.Context) (store.SchedBacklog, int, error)
}

// NewFleet returns the fleet reporter and starts sampling throughput until ctx ends.
func NewFleet(ctx context.Context, rdb redis.UniversalClient, insp *asynq.Inspector, opt FleetOptions) *Fleet {
	if opt.Queues == nil {
		opt.Queues = tasks.Queues
	}
	f := &Fleet{rdb: rdb, insp: insp, threshold: opt.Threshold, queues: opt.Queues, version: opt.Version, started: time.Now(), breakers: opt.Breakers, saturated: opt.Saturated, deploys: opt.Deployments, scheduler: opt.Scheduler}
	go f.sampleLoop(ctx)
	return f
}

// QueueState is one queue's counts.
type QueueState struct {
	Name           string  `json:"name"`
	Pending        int     `json:"pending"`
	Scheduled      int     `json:"scheduled"`
	Retry          int     `json:"retry"`
	Active         int     `json:"active"`
	Archived       int     `json:"archived"`
	LatencySeconds float64 `json:"latency_seconds"`
}

// Workers summarises the live worker processes.
type Workers struct {
	Live        int `json:"live"`
	Concurrency int `json:"concurrency"`
	Busy        int `json:"busy"`
}

type snapshot struct {
	queues   []QueueState
	backlog  int // waiting to run: asynq's pending, scheduled and retry, and the scheduler's jobs
	runnable int // of which a worker could start now: not waiting for a model's capacity
	workers  Workers
	webhooks QueueState // the deliveries' queue: apart from the chat backlog
	sched    Scheduler
	// per priority: runnable jobs, and jobs of the lane's queues in asynq
	lanes map[string]*laneCount
}

type laneCount struct{ runnable, backlog int }

// snapshotTTL keeps frequent scrapes and probes from re-reading the queues.
const snapshotTTL = 2 * time.Second

func (f *Fleet) snapshot(ctx context.Context) (snapshot, error) {
	f.mu.Lock()
	if time.Since(f.cacheAt) < snapshotTTL {
		s := f.cached
		f.mu.Unlock()
		return s, nil
	}
	f.mu.Unlock()

	var s snapshot
	names := make([]string, 0, len(f.queues))
	for q := range f.queues {
		names = append(names, q)
	}
	sort.Strings(names)
	// asynq knows a queue once a task was enqueued to it; GetQueueInfo on
	// another is an error, so ask which exist first.
	existing, err := f.insp.Queues()
	if err != nil {
		return snapshot{}, fmt.Errorf("list queues: %w", err)
	}
	state := func(q string) (QueueState, error) {
		if !slices.Contains(existing, q) {
			return QueueState{Name: q}, nil
		}
		info, err := f.insp.GetQueueInfo(q)
		if err != nil {
			return QueueState{}, fmt.Errorf("queue %s: %w", q, err)
		}
		return QueueState{Name: q, Pending: info.Pending, Scheduled: info.Scheduled, Retry: info.Retry,
			Active: info.Active, Archived: info.Archived, LatencySeconds: info.Latency.Seconds()}, nil
	}
	s.lanes = map[string]*laneCount{}
	for _, p := range tasks.Priorities {
		s.lanes[p] = &laneCount{}
	}
	for _, q := range names {
		qs, err := state(q)
		if err != nil {
			return snapshot{}, err
		}
		s.queues = append(s.queues, qs)
		n := qs.Pending + qs.Scheduled + qs.Retry
		s.backlog += n
		if l := s.lanes[tasks.PriorityOfQueue(q)]; l != nil {
			l.runnable += n
			l.backlog += n
		}
	}
	if s.sched, err = f.readScheduler(ctx); err != nil {
		return snapshot{}, fmt.Errorf("read scheduler: %w", err)
	}
	for _, l := range s.sched.Lanes {
		s.backlog += l.Queued
		s.lanes[l.Priority].runnable += l.Runnable
		s.lanes[l.Priority].backlog += l.Queued
	}
	for _, l := range s.lanes {
		s.runnable += l.runnable
	}
	if s.webhooks, err = state(tasks.QueueWebhooks); err != nil {
		return snapshot{}, err
	}
	servers, err := f.insp.Servers()
	if err != nil {
		return snapshot{}, fmt.Errorf("list workers: %w", err)
	}
	for _, srv := range servers {
		if !servesOurs(srv.Queues) {
			continue
		}
		s.workers.Live++
		s.workers.Concurrency += srv.Concurrency
	}
	// A worker runs most jobs itself, not as asynq tasks (orchestration/direct.go):
	// the running attempts' leases count them all.
	s.workers.Busy = s.sched.running
	f.mu.Lock()
	f.cached, f.cacheAt = s, time.Now()
	f.mu.Unlock()
	return s, nil
}

// sampleLoop records the jobs the scheduler has handed out every 5 s, for
// the drain rate that queue status advises on.
func (f *Fleet) sampleLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		if s, err := f.snapshot(ctx); err == nil {
			total := int(s.sched.handed)
			f.mu.Lock()
			if n := len(f.samples); n > 0 && total < f.samples[n-1].handed {
				f.samples = nil // the count started over (the scheduler was idle past its keep)
			}
			f.samples = append(f.samples, sample{at: time.Now(), handed: total})
			for len(f.samples) > 1 && time.Since(f.samples[0].at) > time.Minute {
				f.samples = f.samples[1:]
			}
			f.mu.Unlock()
			f.recordHistory(ctx, s.backlog)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rate is jobs finished per second over the last minute (ok=false: not enough samples).
func (f *Fleet) rate() (float64, bool) { return f.rateOver(time.Minute) }

// rateOver is jobs finished per second over the samples of the last span
// (ok=false: fewer than two).
func (f *Fleet) rateOver(span time.Duration) (float64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.samples)
	if n < 2 {
		return 0, false
	}
	b := f.samples[n-1]
	a := f.samples[n-2]
	for i := n - 3; i >= 0 && b.at.Sub(f.samples[i].at) <= span; i-- {
		a = f.samples[i]
	}
	dt := b.at.Sub(a.at).Seconds()
	if dt <= 0 {
		return 0, false
	}
	return float64(b.handed-a.handed) / dt, true
}

// drainTarget is how soon the advice wants a backlog gone.
const drainTarget = 5 * time.Minute

// advise says how many workers would drain the runnable backlog within
// drainTarget at the measured rate, or that the providers' capacity, not the
// workers, holds it back. Jobs that wait for their model's quota are not
// counted toward workers: more workers would not run them sooner.
func advise(backlog, runnable, threshold int, w Workers, rate float64, measured bool, saturated []string) string {
	msg := adviseRunnable(runnable, w, rate, measured, saturated)
	if held := backlog - runnable; held > 0 {
		msg += fmt.Sprintf("; %d more wait for their model's quota (adding workers will not run them sooner)", held)
	}
	if backlog > threshold {
		msg = fmt.Sprintf("backlog %d is over the alert threshold %d. ", backlog, threshold) + msg
	}
	return msg
}

func adviseRunnable(runnable int, w Workers, rate float64, measured bool, saturated []string) string {
	switch {
	case runnable == 0:
		return "no runnable backlog"
	case len(saturated) > 0 && w.Live > 0:
		msg := fmt.Sprintf("%d jobs waiting; adding workers will not help: %s", runnable, strings.Join(saturated, "; "))
		if measured && rate > 0 {
			drain := time.Duration(float64(runnable)/rate) * time.Second
			msg += fmt.Sprintf(". At %.2f jobs/s the backlog drains in about %s; raise the provider's quota or add a fallback provider", rate, drain.Round(time.Second))
		}
		return msg
	case w.Live == 0:
		return fmt.Sprintf("%d jobs waiting and no live worker: start workers", runnable)
	case !measured || rate <= 0:
		return fmt.Sprintf("%d jobs waiting, %d workers live, no completions measured in the last minute: check the workers and the providers", runnable, w.Live)
	}
	perWorker := rate / float64(w.Live)
	need := int(math.Ceil(float64(runnable) / (perWorker * drainTarget.Seconds())))
	need = max(need, 1)
	drain := time.Duration(float64(runnable)/rate) * time.Second
	msg := fmt.Sprintf("%d jobs waiting; at %.2f jobs/s per worker the %d live workers drain it in about %s; %d workers would drain it within %s",
		runnable, perWorker, w.Live, drain.Round(time.Second), need, drainTarget)
	if need > w.Live {
		msg += fmt.Sprintf(": add %d", need-w.Live)
	}
	return msg
}

// Register adds /health/queue/status, /health/queue/history and
// /health/detailed (and the same under /api/v1/health).
func (f *Fleet) Register(e *echo.Echo) {
	for _, base := range []string{"/health", "/api/v1/health"} {
		e.GET(base+"/queue/status", f.queueStatus)
		e.GET(base+"/queue/history", f.history)
		e.GET(base+"/detailed", f.detailed)
	}
}

func (f *Fleet) queueStatus(c echo.Context) error {
	s, err := f.snapshot(c.Request().Context())
	if err != nil {
		c.Response().Header().Set("Retry-After", "1")
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "error": "queue state unreadable: Redis unreachable"})
	}
	status := "ok"
	if s.backlog > f.threshold {
		status = "warning"
	}
	rate, measured := f.rate()
	var saturated []string
	if f.saturated != nil && s.backlog > 0 {
		saturated, _ = f.saturated(c.Request().Context()) // advice without it beats no answer
	}
	body := map[string]any{
		"status": status, "threshold": f.threshold, "backlog": s.backlog, "runnable": s.runnable, "queues": s.queues,
		"scheduler": s.sched, "workers": s.workers, "webhooks": s.webhooks,
		"advice": advise(s.backlog, s.runnable, f.threshold, s.workers, rate, measured, saturated),
	}
	if len(saturated) > 0 {
		body["providers_at_limit"] = saturated
	}
	if measured {
		body["throughput_jobs_per_second"] = math.Round(rate*100) / 100
	}
	return c.JSON(http.StatusOK, body)
}

func (f *Fleet) detailed(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	body := map[string]any{"version": f.version, "uptime_seconds": int(time.Since(f.started).Seconds())}
	status, code := "ok", http.StatusOK
	start := time.Now()
	if err := f.rdb.Ping(ctx).Err(); err != nil {
		status, code = "degraded", http.StatusServiceUnavailable
		body["redis"] = map[string]any{"status": "unreachable"}
	} else {
		body["redis"] = map[string]any{"status": "ok", "ping_ms": float64(time.Since(start).Microseconds()) / 1000}
		if s, err := f.snapshot(ctx); err == nil {
			body["queue"] = map[string]any{"backlog": s.backlog, "runnable": s.runnable, "threshold": f.threshold, "queues": s.queues, "scheduler": s.sched}
			body["workers"] = s.workers
			if s.workers.Live == 0 {
				status = "degraded"
			}
		}
		if f.breakers != nil {
			if b, err := f.breakers(ctx); err == nil {
				body["breakers"] = b
				for _, st := range b {
					if st != "closed" {
						status = "degraded"
					}
				}
			}
		}
		if f.deploys != nil {
			if d, err := f.deploys(ctx); err == nil {
				body["deployments"] = d
			} // the rest of the report beats none
		}
	}
	body["status"] = status
	return c.JSON(code, body)
}

// Collector exports the fleet's queue gauges from this process.
func (f *Fleet) Collector() prometheus.Collector { return fleetCollector{f} }

var (
	backlogDesc  = prometheus.NewDesc("chatfleet_queue_backlog", "Jobs waiting to run (pending + scheduled + retry), fleet-wide; aggregate with max.", []string{"queue"}, nil)
	latencyDesc  = prometheus.NewDesc("chatfleet_queue_latency_seconds", "Age of the oldest pending job, fleet-wide; aggregate with max.", []string{"queue"}, nil)
	workersDesc  = prometheus.NewDesc("chatfleet_workers_live", "Live worker processes, fleet-wide; aggregate with max.", nil, nil)
	runnableDesc = prometheus.NewDesc("chatfleet_queue_runnable", "Queued jobs a worker could start now (their turn has come, their model has capacity), fleet-wide; aggregate with max.", []string{"priority"}, nil)
	blockedDesc  = prometheus.NewDesc("chatfleet_queue_blocked", "Queued jobs not yet eligible, by reason (model_capacity, session_order), fleet-wide; aggregate with max.", []string{"reason"}, nil)
	webhookDesc  = prometheus.NewDesc("chatfleet_webhook_queue", "Webhook deliveries by state (waiting: pending, scheduled or retrying; archived: given up, to re-deliver), fleet-wide; aggregate with max.", []string{"state"}, nil)
)

type fleetCollector struct{ f *Fleet }

func (c fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backlogDesc
	ch <- latencyDesc
	ch <- workersDesc
	ch <- webhookDesc
	ch <- runnableDesc
	ch <- blockedDesc
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := c.f.snapshot(ctx)
	if err != nil {
		return // no sample is better than a wrong zero while Redis is away
	}
	// The scheduler's jobs count in the backlog of their priority's queue
	// (with a spread, under the priority's unspread name).
	backlog := map[string]int{}
	for _, q := range s.queues {
		backlog[q.Name] += q.Pending + q.Scheduled + q.Retry
		ch <- prometheus.MustNewConstMetric(latencyDesc, prometheus.GaugeValue, q.LatencySeconds, q.Name)
	}
	for _, l := range s.sched.Lanes {
		backlog[tasks.QueueName(l.Priority)] += l.Queued
	}
	for q, n := range backlog {
		ch <- prometheus.MustNewConstMetric(backlogDesc, prometheus.GaugeValue, float64(n), q)
	}
	for p, l := range s.lanes {
		ch <- prometheus.MustNewConstMetric(runnableDesc, prometheus.GaugeValue, float64(l.runnable), p)
	}
	for reason, n := range s.sched.Blocked {
		ch <- prometheus.MustNewConstMetric(blockedDesc, prometheus.GaugeValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(workersDesc, prometheus.GaugeValue, float64(s.workers.Live))
	w := s.webhooks
	ch <- prometheus.MustNewConstMetric(webhookDesc, prometheus.GaugeValue, float64(w.Pending+w.Scheduled+w.Retry), "waiting")
	ch <- prometheus.MustNewConstMetric(webhookDesc, prometheus.GaugeValue, float64(w.Archived), "archived")
}

// servesOurs tells a chatfleet worker (whatever its queue spread) from other
// asynq servers on the same Redis, a worker's webhook server included (its
// queue is named apart from the chat queues).
func servesOurs(queues map[string]int) bool {
	for q := range queues {
		if strings.HasPrefix(q, tasks.QueueName("")) {
			return true
		}
	}
	return false
}
