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
	PollInterval    time.Duration // idle poll of empty queues
	ShutdownTimeout time.Duration
	LogLevel        string
}

// Worker pulls chat jobs from the queues and runs them through the pipeline.
type Worker struct {
	srv      *asynq.Server
	pipeline *Pipeline
}

// NewWorker builds a worker on a shared Redis client (asynq does not close it).
func NewWorker(rdb redis.UniversalClient, p *Pipeline, log zerolog.Logger, o WorkerOptions) *Worker {
	alog := log.With().Str("logger", "asynq").Logger()
	lvl := asynq.InfoLevel
	if o.LogLevel == "debug" || o.LogLevel == "trace" {
		lvl = asynq.DebugLevel
	}
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:       o.Concurrency,
		Queues:            tasks.Queues,
		TaskCheckInterval: o.PollInterval,
		// Scheduled and retried tasks (including jobs that yielded their turn)
		// move back to pending on this tick.
		DelayedTaskCheckInterval: 200 * time.Millisecond,
		RetryDelayFunc:           retryDelay,
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
	return &Worker{srv: srv, pipeline: p}
}

// Start begins fetching and running jobs.
func (w *Worker) Start() error {
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeChatComplete, w.pipeline)
	if err := w.srv.Start(mux); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	return nil
}

// Shutdown stops fetching, waits for in-flight jobs up to the shutdown timeout
// and hands the rest back to the queue.
func (w *Worker) Shutdown() {
	w.srv.Stop()
	w.srv.Shutdown()
}
