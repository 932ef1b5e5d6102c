package orchestration

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/logging"
	"github.com/chatfleet/chatfleet/jobs"
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

	// The dispatcher hands this worker's free slots the scheduler's jobs.
	dispatcher   *jobs.Dispatcher
	stopDispatch context.CancelFunc
	dispatched   chan struct{} // closed when the dispatcher's last enqueues are done
	concurrency  int
	// slots holds a token per job running here, asynq's tasks and the jobs
	// run here directly (direct.go) alike: together they stay within the
	// concurrency.
	slots chan struct{}
	// The jobs run here directly: their context (canceled when a shutdown
	// times out) and their count.
	directCtx    context.Context
	cancelDirect context.CancelFunc
	running      sync.WaitGroup
	shutdownIn   time.Duration
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
	w := &Worker{srv: srv, pipeline: p, log: log, stop: func() {}, stopDispatch: func() {}, concurrency: o.Concurrency,
		slots: make(chan struct{}, o.Concurrency), shutdownIn: o.ShutdownTimeout}
	w.directCtx, w.cancelDirect = context.WithCancel(context.Background())
	// An idle processor polls every 1/2 to 3/2 of asynq's TaskCheckInterval,
	// so a task handed out for a free slot here is picked up by then, or
	// another worker took it: past that, the slot is offered again (a
	// longer wait left a fleet's slots idle for it at every wave of jobs).
	// While jobs wait, a round waits for an eighth of the slots to free
	// (at most the dispatcher's linger), so a busy worker's hand-outs come
	// in batches, not a dispatch script per job.
	w.dispatcher = p.jobs.NewDispatcher(jobs.DispatchOptions{Free: w.free, Pickup: o.PollInterval + 20*time.Millisecond,
		Batch: o.Concurrency / 8, Run: w.runHere, Log: log})
	w.mux = asynq.NewServeMux()
	w.mux.Use(replayOutcome, withJobLogger(log), countActive(p.m.active), w.countSlots, recoverPanics)
	w.mux.Handle(tasks.TypeChatComplete, p)
	return w
}

// countSlots holds a slot for each task asynq delivers (a job run here
// directly took its slot when it was handed out), and tells the dispatcher
// when one starts and ends: a slot is free for the scheduler's next job.
func (w *Worker) countSlots(next asynq.Handler) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		if !isDirect(ctx) {
			select {
			case w.slots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err() // asynq runs it again (not a failure)
			}
			defer func() { <-w.slots }()
		}
		w.dispatcher.Started()
		defer w.dispatcher.Poke()
		return next.ProcessTask(ctx, t)
	})
}

// free is how many more jobs this worker can take now.
func (w *Worker) free() int { return w.concurrency - len(w.slots) }

// Start begins fetching and running jobs.
func (w *Worker) Start() error {
	if err := w.srv.Start(w.mux); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	w.stop = stop
	go w.pipeline.jobs.RenewLeases(ctx, w.pipeline.jobs.Lease(), w.log)
	dctx, stopDispatch := context.WithCancel(ctx)
	w.stopDispatch = stopDispatch
	w.dispatched = make(chan struct{})
	go func() {
		defer close(w.dispatched)
		w.dispatcher.Run(dctx)
	}()
	return nil
}

// Shutdown stops handing out and fetching, waits for in-flight jobs up to the
// shutdown timeout and hands the rest back to the queue.
func (w *Worker) Shutdown() {
	w.stopDispatch()
	if w.dispatched != nil {
		<-w.dispatched // the jobs taken from the scheduler are in the queue
	}
	w.srv.Stop()
	// The jobs run here drain with asynq's, for as long: then they are
	// canceled, hand their jobs over, and are waited for.
	drained := make(chan struct{})
	go func() { w.running.Wait(); close(drained) }()
	timeout := time.NewTimer(w.shutdownIn)
	defer timeout.Stop()
	w.srv.Shutdown()
	select {
	case <-drained:
	case <-timeout.C:
		w.cancelDirect()
		<-drained
	}
	w.cancelDirect()
	w.stop() // leases are renewed while jobs drain
}
