// Package wiring maps the configuration onto each package's options and
// assembles the parts both processes share. Only the mains import config; the
// packages they build take plain options.
package wiring

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/config"
	"github.com/chatfleet/chatfleet/health"
	"github.com/chatfleet/chatfleet/internal/tracing"
	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/models"
	"github.com/chatfleet/chatfleet/orchestration"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
	"github.com/chatfleet/chatfleet/tasks"
	"github.com/chatfleet/chatfleet/webhooks"
)

// Closers runs shutdown steps last in, first out, joining their errors.
type Closers struct{ fns []func() error }

// Add pushes a step.
func (c *Closers) Add(f func() error) { c.fns = append(c.fns, f) }

// AddFunc pushes a step that cannot fail.
func (c *Closers) AddFunc(f func()) { c.Add(func() error { f(); return nil }) }

// Close runs every step, newest first, once.
func (c *Closers) Close() error {
	var err error
	for i := len(c.fns) - 1; i >= 0; i-- {
		err = errors.Join(err, c.fns[i]())
	}
	c.fns = nil
	return err
}

// WithTimeout runs a shutdown step with a deadline of d.
func WithTimeout(d time.Duration, f func(context.Context) error) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return f(ctx)
	}
}

// Registry is a process's metrics registry with the Go and process collectors.
func Registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// WarnUnknown logs every CHATFLEET_ variable the configuration does not know.
func WarnUnknown(log zerolog.Logger, environ []string) {
	for _, w := range config.Unknown(environ) {
		log.Warn().Str("problem", w).Msg("unknown configuration variable")
	}
}

// runner names this process in the records of the attempts it runs.
var runner = stream.NewRunnerName()

// Store is the job store of cfg.
func Store(cfg config.Config, rdb redis.UniversalClient) *store.Store {
	return store.New(rdb, store.Options{
		Runner:             runner,
		Retention:          cfg.JobRetention,
		HistoryMaxMessages: cfg.HistoryMaxMessages,
		HistoryTTL:         cfg.HistoryTTL,
		TenantMaxJobs:      cfg.TenantMaxJobs,
		UsageRetention:     cfg.UsageRetention,
	})
}

// Jobs is the job lifecycle of cfg: a job with webhooks enqueues them when
// it ends; costs are priced at list's prices in force.
func Jobs(cfg config.Config, list *ModelList, rdb redis.UniversalClient, st *store.Store) *jobs.Manager {
	q := asynq.NewClientFromRedisClient(rdb)
	// The outbox changes jobs through the manager that notifies it: it is
	// made once the manager is, before any job can end.
	var outbox *webhooks.Outbox
	jm := jobs.New(st, q, asynq.NewInspectorFromRedisClient(rdb),
		jobs.Options{MaxRetries: cfg.MaxRetries, QueueSpread: cfg.QueueSpread, Lease: cfg.JobLease, TenantWeights: cfg.TenantWeights,
			Notify: func(ctx context.Context, id string) { outbox.Notify(ctx, id) }, Budgets: budgets(cfg), Prices: list.Prices, DefaultModel: list.Default})
	outbox = webhooks.NewOutbox(st.Reader(), jm, q, Webhooks(cfg))
	return jm
}

func budgets(cfg config.Config) map[string]jobs.Budget {
	out := make(map[string]jobs.Budget, len(cfg.TenantBudgets))
	for t, b := range cfg.TenantBudgets {
		out[t] = jobs.Budget{Tokens: b.Tokens, USD: b.USD, Month: b.Month, Soft: float64(b.SoftPercent) / 100}
	}
	return out
}

// pricesOf are the model prices with set in force, dollars per million
// input and output tokens: CHATFLEET_MODEL_PRICES, and a public model's own
// price in the models file over it.
func pricesOf(cfg config.Config, set *models.Set) map[string][2]float64 {
	out := make(map[string][2]float64, len(cfg.ModelPrices))
	for m, p := range cfg.ModelPrices {
		out[m] = [2]float64{p.Input, p.Output}
	}
	for _, m := range set.Models {
		if m.Price != nil {
			out[m.Name] = [2]float64{m.Price.Input, m.Price.Output}
		}
	}
	return out
}

// Webhooks are cfg's webhook endpoints by tenant.
func Webhooks(cfg config.Config) *webhooks.Registry {
	eps := make([]webhooks.Endpoint, 0, len(cfg.Webhooks))
	for _, e := range cfg.Webhooks {
		eps = append(eps, webhooks.Endpoint{Tenant: e.Tenant, URL: e.URL, Secret: e.Secret, Events: e.Events, IncludeResult: e.IncludeResult})
	}
	return webhooks.NewRegistry(eps)
}

// StartWebhooks starts delivering webhooks and sweeping the outbox (until
// ctx ends) beside a worker; the returned function stops delivering. With no
// endpoints configured no job can have webhooks (a per-job webhook_url needs
// its tenant's secret), and nothing starts: no idle polling.
func StartWebhooks(ctx context.Context, cfg config.Config, rdb redis.UniversalClient, jm *jobs.Manager, st *store.Store,
	reg prometheus.Registerer, log zerolog.Logger) (func(), error) {
	registry := Webhooks(cfg)
	d := webhooks.NewDeliverer(jm, registry, webhooks.Options{
		AllowPrivate: cfg.WebhookAllowPrivate, AllowHTTP: cfg.WebhookAllowHTTP || cfg.Env != config.EnvProduction,
		Timeout: cfg.WebhookTimeout, RetryBase: cfg.WebhookRetryBase, RetryFor: cfg.WebhookRetryFor,
	}, reg) // its metrics exist from the start, for the dashboards
	if len(cfg.Webhooks) == 0 {
		return func() {}, nil
	}
	srv := webhooks.NewServer(rdb, d, cfg.WebhookConcurrency, cfg.ShutdownTimeout, log)
	if err := srv.Start(); err != nil {
		return nil, err
	}
	go webhooks.NewOutbox(st.Reader(), jm, asynq.NewClientFromRedisClient(rdb), registry).Sweep(ctx, time.Second, log)
	return srv.Shutdown, nil
}

// Models is the model list of cfg: its models file, else one model made
// from the CHATFLEET_LLM_* variables, its deployments the provider chain
// (primary first, tried in order).
func Models(cfg config.Config) *models.Set {
	if cfg.ModelSet != nil {
		return cfg.ModelSet
	}
	def := cmp.Or(cfg.LLMModel, cfg.LLMProvider)
	m := models.Model{Name: def}
	for _, s := range append([]config.ProviderSpec{cfg.Primary()}, cfg.Fallbacks...) {
		m.Deployments = append(m.Deployments, models.Deployment{Provider: s.Kind, Model: s.Model, BaseURL: s.BaseURL, APIKey: s.APIKey,
			RPM: s.Limits.RPM, TPM: s.Limits.TPM, Concurrency: s.Limits.Concurrency, Weight: 1})
	}
	return &models.Set{Default: def, Models: []models.Model{m}, Legacy: true}
}

// Providers are the deployments of cfg's models, as the provider metrics,
// breakers and limits name them.
func Providers(cfg config.Config) []llm.Spec { return llm.Specs(Models(cfg)) }

// ModelList holds the model list in force: cfg's, replaced when the
// models file is edited, with the prices that go with it.
type ModelList struct {
	cfg     config.Config
	getenv  func(string) string
	log     zerolog.Logger
	cur     atomic.Pointer[models.Set]
	prices  atomic.Pointer[map[string][2]float64]
	mu      sync.Mutex
	changed []func(*models.Set) error
}

// NewModelList is cfg's model list; getenv reads the key variables a models
// file names.
func NewModelList(cfg config.Config, getenv func(string) string, log zerolog.Logger) *ModelList {
	l := &ModelList{cfg: cfg, getenv: getenv, log: log.With().Str("component", "models").Logger()}
	set := Models(cfg)
	p := pricesOf(cfg, set)
	l.cur.Store(set)
	l.prices.Store(&p)
	return l
}

// Watch re-reads a models file while ctx lasts: within 10 s of an edit,
// and at once on SIGHUP (models.Watch). Start it once every part that
// follows the list has said so (OnChange), so that none misses an edit.
func (l *ModelList) Watch(ctx context.Context) {
	if l.cfg.ModelsFile != "" {
		go models.Watch(ctx, l.cfg.ModelsFile, l.getenv, 5*time.Second, l.log, l.apply)
	}
}

// Current is the model list in force.
func (l *ModelList) Current() *models.Set { return l.cur.Load() }

// Default is the model a job that names none gets.
func (l *ModelList) Default() string { return l.Current().Default }

// Prices are the prices in force, dollars per million input and output
// tokens by model: CHATFLEET_MODEL_PRICES, and a public model's own price
// in the models file over it.
func (l *ModelList) Prices() map[string][2]float64 { return *l.prices.Load() }

// OnChange has f take each new list; an error refuses the list (the next
// read of the file offers it again).
func (l *ModelList) OnChange(f func(*models.Set) error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changed = append(l.changed, f)
}

func (l *ModelList) apply(set *models.Set) error {
	if l.cfg.Env == config.EnvProduction {
		for _, m := range set.Models {
			for _, d := range m.Deployments {
				if d.Provider == "sim" {
					return fmt.Errorf("model %q: deployment %q: production refuses the simulated LLM", m.Name, d.ID)
				}
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.changed {
		if err := f(set); err != nil {
			return err
		}
	}
	p := pricesOf(l.cfg, set)
	l.prices.Store(&p)
	l.cur.Store(set)
	return nil
}

// StartWorker assembles a worker, starts the job rescuer and reconciler and
// the webhook deliveries beside it (all until ctx ends) and starts fetching
// jobs. The returned function stops it: chat jobs first, then deliveries.
func StartWorker(ctx context.Context, cfg config.Config, list *ModelList, rdb redis.UniversalClient, jm *jobs.Manager, st *store.Store,
	reg prometheus.Registerer, log zerolog.Logger) (func(), error) {
	w, err := Worker(ctx, cfg, list, rdb, jm, reg, log)
	if err != nil {
		return nil, err
	}
	stopWebhooks, err := StartWebhooks(ctx, cfg, rdb, jm, st, reg, log)
	if err != nil {
		return nil, err
	}
	jm.Supervise(ctx, jobs.SuperviseOptions{Registerer: reg, Log: log.With().Str("component", "supervisor").Logger()})
	if err := w.Start(); err != nil {
		stopWebhooks()
		return nil, err
	}
	return func() { w.Shutdown(); stopWebhooks() }, nil
}

// Worker assembles the provider chain, pipeline and asynq server that the
// worker process and standalone mode run. ctx bounds the breakers' refresh.
func Worker(ctx context.Context, cfg config.Config, list *ModelList, rdb redis.UniversalClient, jm *jobs.Manager,
	reg prometheus.Registerer, log zerolog.Logger) (*orchestration.Worker, error) {
	metrics := llm.NewMetrics(reg, llm.Specs(list.Current()))
	metrics.Price(list.Prices(), llm.Specs(list.Current()))
	chain, err := llm.Build(ctx, list.Current(), llm.ChainOptions{
		Sim:      llm.SimConfig{Latency: cfg.SimLatency, TokenDelay: cfg.SimTokenDelay, Tokens: cfg.SimTokens, FailRate: cfg.SimFailRate, Stamps: cfg.SimStamps},
		Breaker:  llm.BreakerSettings{Failures: cfg.BreakerFailures, OpenFor: cfg.BreakerOpenFor},
		Capacity: llm.CapacitySettings{MaxRetryDelay: cfg.MaxRetryDelay, Margin: cfg.RateMargin},
		Timeouts: llm.Timeouts{FirstToken: cfg.FirstTokenWait, Idle: cfg.IdleTimeout},
	}, rdb, metrics, log)
	if err != nil {
		return nil, err
	}
	list.OnChange(func(set *models.Set) error {
		if err := chain.Update(set); err != nil {
			return fmt.Errorf("the worker's router: %w", err)
		}
		metrics.Price(pricesOf(cfg, set), llm.Specs(set))
		return nil
	})
	p := orchestration.NewPipeline(jm, chain, orchestration.PipelineOptions{
		MaxRetries:    cfg.MaxRetries,
		CallTimeout:   cfg.LLMTimeout,
		Coalescing:    stream.Coalescing{Window: cfg.StreamFlushInterval, MaxBytes: cfg.StreamFlushBytes, Unfollowed: cfg.StreamUnfollowedFlushInterval},
		OnAllDown:     cfg.OnAllDown,
		DegradedReply: cfg.DegradedReply,
		MaxRetryDelay: cfg.MaxRetryDelay,
		Metrics:       orchestration.NewMetrics(reg),
		FirstToken:    health.NewFirstTokens(ctx, rdb).Observe,
		Wakeups:       stream.ListenWakeups(ctx, rdb, runner, log),
	})
	return orchestration.NewWorker(rdb, p, log, orchestration.WorkerOptions{
		Concurrency:     cfg.WorkerConcurrency,
		PollInterval:    cfg.QueuePollInterval,
		Queues:          tasks.QueueSet(cfg.QueueSpread),
		ShutdownTimeout: cfg.ShutdownTimeout,
		LogLevel:        cfg.LogLevel,
	}), nil
}

// Tracing turns OpenTelemetry tracing on from the OTEL_* variables of
// environ (off without an OTLP endpoint); the returned function flushes the
// spans still buffered, within a few seconds.
func Tracing(ctx context.Context, service string, environ []string, log zerolog.Logger) (func(), error) {
	getenv := config.Getenv(environ)
	shutdown, err := tracing.Setup(ctx, service, getenv)
	if err != nil {
		return nil, err
	}
	if tracing.Enabled() {
		log.Info().Str("endpoint", getenv("OTEL_EXPORTER_OTLP_ENDPOINT")+getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")).Msg("tracing on: spans go out over OTLP")
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdown(ctx); err != nil {
			log.Warn().Err(err).Msg("could not flush the last spans")
		}
	}, nil
}
