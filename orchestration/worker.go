package orchestration

import (
	"context"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/logging"
	"github.com/chatfleet/chatfleet/tasks"
)

// WorkerOptions configures the asynq server of a worker.
type WorkerOptions struct {
	Concurrency     int
	PollInterval    time.Duration  // idle poll of empty queues
	Queues          map[string]int // the queues to serve and their weights (default tasks.Queues)
	ShutdownTimeout time.Duration
	LogLevel        string
}

// Worker pulls chat jobs from the queues and runs them through the pipeline.
type Worker struct {
	srv      *asynq.Server
	mux      *asynq.ServeMux
	pipeline *Pipeline
	log      zerolog.Logger
	stop     context.CancelFunc
}

// NewWorker builds a worker on a shared Redis client (asynq does not close it).
func NewWorker(rdb redis.UniversalClient, p *Pipeline, log zerolog.Logger, o WorkerOptions) *Worker {
	alog := log.With().Str("logger", "asynq").Logger()
	lvl := asynq.InfoLevel
	if o.LogLevel == "debug" || o.LogLevel == "trace" {
		lvl = asynq.DebugLevel
	}
	if o.Queues == nil {
		o.Queues = tasks.Queues
	}
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:       o.Concurrency,
		Queues:            o.Queues,
		TaskCheckInterval: o.PollInterval,
		// Scheduled and retried tasks move back to pending on this tick.
		DelayedTaskCheckInterval: 200 * time.Millisecond,
		RetryDelayFunc:           p.retryDelay,
		IsFailure:                isFailure,
		ShutdownTimeout:          o.ShutdownTimeout,
		Logger:                   logging.Asynq{L: alog},
		LogLevel:                 lvl,
		HealthCheckFunc: func(err error) {
			if err != nil {
				alog.Warn().Err(err).Msg("queue health check failed")
			}
		},
		ErrorHandler: asynq.ErrorHandlerFunc(func(ctx context.Context, t *asynq.Task, err error) {
			if !isFailure(err) {
				return
			}
			id, _ := asynq.GetTaskID(ctx)
			alog.Debug().Str("job_id", id).Err(err).Msg("task attempt returned an error")
		}),
	})
	mux := asynq.NewServeMux()
	mux.Use(withJobLogger(log), countActive(p.m.active), recoverPanics)
	mux.Handle(tasks.TypeChatComplete, p)
	return &Worker{srv: srv, mux: mux, pipeline: p, log: log, stop: func() {}}
}

// Start begins fetching and running jobs.
func (w *Worker) Start() error {
	if err := w.srv.Start(w.mux); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	w.stop = stop
	go w.pipeline.jobs.RenewLeases(ctx, w.pipeline.jobs.Lease(), w.log)
	return nil
}

// Shutdown stops fetching, waits for in-flight jobs up to the shutdown timeout
// and hands the rest back to the queue.
func (w *Worker) Shutdown() {
	w.srv.Stop()
	w.srv.Shutdown()
	w.stop() // leases are renewed while jobs drain
}
