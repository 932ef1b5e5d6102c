package orchestration

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// The worker's cross-cutting concerns, as asynq middleware around the
// pipeline, outermost first.

// withJobLogger puts a logger naming the job into the task's context.
func withJobLogger(log zerolog.Logger) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			id, _ := taskOf(ctx)
			return next.ProcessTask(log.With().Str("job_id", id).Logger().WithContext(ctx), t)
		})
	}
}

// countActive keeps the active-jobs gauge: tasks this process is working on,
// a job waiting in place for its session's turn included.
func countActive(g prometheus.Gauge) asynq.MiddlewareFunc {
	return func(next asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			g.Inc()
			defer g.Dec()
			return next.ProcessTask(ctx, t)
		})
	}
}

// recoverPanics turns a panic into a failed attempt, logged with its stack:
// asynq retries the job and the worker goes on.
func recoverPanics(next asynq.Handler) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) (err error) {
		defer func() {
			if v := recover(); v != nil {
				zerolog.Ctx(ctx).Error().Str("panic", fmt.Sprint(v)).Bytes("stack", debug.Stack()).Msg("job handler panicked")
				err = fmt.Errorf("job handler panicked: %v", v)
			}
		}()
		return next.ProcessTask(ctx, t)
	})
}
