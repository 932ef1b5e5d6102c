package orchestration

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/tasks"
)

// A job the dispatcher hands to this worker runs here at once, while a slot
// is free, instead of as an asynq task: an idle asynq processor looks for
// work every 1/2 to 3/2 of its poll interval and nothing wakes it sooner,
// and that wait was half of what an idle fleet added to a request (docs/design.md,
// "The way of a request"). Nothing is lost by the shortcut: until the attempt
// starts, the job is queued with no task, which the reconciler repairs as it
// does a lost enqueue; once started, the attempt's lease covers it.
//
// What asynq does with an attempt's error it still does: a job that did not
// end is handed back as a task. A failure's task carries the error in its
// headers, and its first delivery returns that error to asynq (replayed),
// which then retries it after the attempt's delay or archives it with the
// error, as if the attempt had been its own.

// Headers of a task handed back after a failed run here.
const (
	headerError = "chatfleet-error"    // the attempt's error, as asynq would record it
	headerFinal = "chatfleet-final"    // "1": the job ended (asynq archives the task)
	headerDelay = "chatfleet-retry-ms" // the retry's delay the attempt's error asked for
)

// handBackTimeout bounds handing a job back; past it, the reconciler finds
// the job without a task and enqueues it again.
const handBackTimeout = 5 * time.Second

type taskKey struct{}

// taskRef names the task a handler runs.
type taskRef struct{ id, queue string }

// taskOf is the task id and queue a handler runs: a direct run's, else
// asynq's.
func taskOf(ctx context.Context) (id, queue string) {
	if r, ok := ctx.Value(taskKey{}).(taskRef); ok {
		return r.id, r.queue
	}
	id, _ = asynq.GetTaskID(ctx)
	queue, _ = asynq.GetQueueName(ctx)
	return id, queue
}

// isDirect says the handler runs a job handed to this worker (no asynq task).
func isDirect(ctx context.Context) bool {
	_, ok := ctx.Value(taskKey{}).(taskRef)
	return ok
}

// runHere runs a job handed out to this worker now, if a slot is free
// (jobs.DispatchOptions.Run).
func (w *Worker) runHere(task, queue string, payload []byte) bool {
	// A job whose body travels by reference reads it (up to megabytes) from
	// Redis as it starts: such jobs go through asynq, whose pickup spaces
	// those reads; a few milliseconds do not matter to a request that large.
	var ref struct {
		Body bool `json:"body"`
	}
	if json.Unmarshal(payload, &ref) != nil || ref.Body {
		return false
	}
	select {
	case w.slots <- struct{}{}:
	default:
		return false
	}
	w.running.Add(1)
	go func() {
		defer w.running.Done()
		defer func() { <-w.slots }()
		ctx, cancel := context.WithCancel(context.WithValue(w.directCtx, taskKey{}, taskRef{id: task, queue: queue}))
		defer cancel()
		// A cancel of the job reaches this run through its runner's channel.
		defer w.pipeline.opt.Wakeups.AddCancel(tasks.JobOfTask(task), cancel)()
		err := w.mux.ProcessTask(ctx, asynq.NewTask(tasks.TypeChatComplete, payload))
		if ctx.Err() != nil && w.directCtx.Err() == nil {
			return // canceled with the job: nothing is left to run
		}
		if err != nil {
			w.handBack(task, queue, payload, err)
		}
	}()
	return true
}

// handBack gives asynq a job whose run here returned err: a deferral or an
// interruption comes back after its delay, a failure is replayed to asynq.
func (w *Worker) handBack(task, queue string, payload []byte, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), handBackTimeout)
	defer cancel()
	delay := w.pipeline.retryDelay(0, err, nil)
	var headers map[string]string
	in := delay
	if isFailure(err) {
		headers = map[string]string{headerError: err.Error(), headerDelay: strconv.FormatInt(delay.Milliseconds(), 10)}
		if errors.Is(err, asynq.SkipRetry) {
			headers[headerFinal] = "1"
		}
		in = 0
	}
	if herr := w.pipeline.jobs.HandBack(ctx, tasks.JobOfTask(task), task, queue, payload, in, headers); herr != nil {
		w.log.Warn().Err(herr).Str("job_id", tasks.JobOfTask(task)).AnErr("attempt_error", err).
			Msg("could not hand a job back to the queue; the reconciler will")
	}
}

// replayed is the error of a run here, returned to asynq by its task's first
// delivery.
type replayed struct {
	msg   string
	final bool
	delay time.Duration
}

func (r *replayed) Error() string { return r.msg }

// Is makes a final error asynq's SkipRetry: the task is archived.
func (r *replayed) Is(target error) bool { return r.final && target == asynq.SkipRetry }

// replayOutcome returns a handed-back task's error on its first delivery
// (a retry of it runs the job).
func replayOutcome(next asynq.Handler) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		msg, ok := t.Headers()[headerError]
		if n, _ := asynq.GetRetryCount(ctx); !ok || n > 0 {
			return next.ProcessTask(ctx, t)
		}
		ms, _ := strconv.ParseInt(t.Headers()[headerDelay], 10, 64)
		return &replayed{msg: msg, final: t.Headers()[headerFinal] == "1", delay: time.Duration(ms) * time.Millisecond}
	})
}
