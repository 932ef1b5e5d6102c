package orchestration

import (
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/config"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
)

// NewWorkerFromConfig assembles the provider, pipeline and asynq server that the
// worker process and standalone mode run.
func NewWorkerFromConfig(cfg config.Config, rdb redis.UniversalClient, st *store.Store, log zerolog.Logger) *Worker {
	// config accepts only the simulated provider so far.
	prov := llm.NewSim(llm.SimConfig{
		Latency: cfg.SimLatency, TokenDelay: cfg.SimTokenDelay,
		Tokens: cfg.SimTokens, FailRate: cfg.SimFailRate,
	})
	p := NewPipeline(st, prov, log, cfg.MaxRetries, cfg.LLMTimeout,
		stream.Coalescing{Window: cfg.StreamFlushInterval, MaxBytes: cfg.StreamFlushBytes})
	return NewWorker(rdb, p, log, WorkerOptions{
		Concurrency:     cfg.WorkerConcurrency,
		PollInterval:    cfg.QueuePollInterval,
		ShutdownTimeout: cfg.ShutdownTimeout,
		LogLevel:        cfg.LogLevel,
	})
}
