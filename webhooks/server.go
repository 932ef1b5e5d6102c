package webhooks

import (
	"context"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/logging"
	"github.com/chatfleet/chatfleet/tasks"
)

// Server delivers webhooks: an asynq server of its own on the deliveries'
// queue, beside the worker's chat server, so that receivers never take a
// chat job's slot.
type Server struct {
	srv *asynq.Server
	mux *asynq.ServeMux
}

// NewServer returns a server running concurrency deliveries at once.
func NewServer(rdb redis.UniversalClient, d *Deliverer, concurrency int, shutdown time.Duration, log zerolog.Logger) *Server {
	alog := log.With().Str("logger", "asynq").Str("component", "webhooks").Logger()
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              concurrency,
		Queues:                   map[string]int{tasks.QueueWebhooks: 1},
		TaskCheckInterval:        200 * time.Millisecond, // an idle server looks for deliveries this often
		DelayedTaskCheckInterval: 200 * time.Millisecond, // retries come back on time
		RetryDelayFunc:           d.RetryDelay,
		ShutdownTimeout:          shutdown,
		Logger:                   logging.Asynq{L: alog},
		LogLevel:                 asynq.WarnLevel,
		ErrorHandler: asynq.ErrorHandlerFunc(func(ctx context.Context, t *asynq.Task, err error) {
			id, _ := asynq.GetTaskID(ctx)
			alog.Debug().Str("delivery", id).Err(err).Msg("webhook attempt failed")
		}),
	})
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeWebhook, d)
	return &Server{srv: srv, mux: mux}
}

// Start begins delivering.
func (s *Server) Start() error { return s.srv.Start(s.mux) }

// Shutdown stops fetching and waits for deliveries in flight (up to the
// shutdown timeout; the rest run again elsewhere).
func (s *Server) Shutdown() { s.srv.Shutdown() }
