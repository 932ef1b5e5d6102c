package orchestration

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/config"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
)

// NewWorkerFromConfig assembles the provider chain, pipeline and asynq server
// that the worker process and standalone mode run. ctx bounds the breakers'
// background refresh.
func NewWorkerFromConfig(ctx context.Context, cfg config.Config, rdb redis.UniversalClient, st *store.Store, reg prometheus.Registerer, log zerolog.Logger) (*Worker, error) {
	chain, err := llm.FromConfig(ctx, cfg, rdb, llm.NewMetrics(reg), log)
	if err != nil {
		return nil, err
	}
	p := NewPipeline(st, chain, log, PipelineOptions{
		MaxRetries:    cfg.MaxRetries,
		CallTimeout:   cfg.LLMTimeout,
		Coalescing:    stream.Coalescing{Window: cfg.StreamFlushInterval, MaxBytes: cfg.StreamFlushBytes},
		OnAllDown:     cfg.OnAllDown,
		DegradedReply: cfg.DegradedReply,
		Metrics:       NewMetrics(reg),
	})
	return NewWorker(rdb, p, log, WorkerOptions{
		Concurrency:     cfg.WorkerConcurrency,
		PollInterval:    cfg.QueuePollInterval,
		ShutdownTimeout: cfg.ShutdownTimeout,
		LogLevel:        cfg.LogLevel,
	}), nil
}
