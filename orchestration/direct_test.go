package orchestration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/tasks"
)

// A task handed back after a failed run here gives asynq the attempt's
// error on its first delivery: its text, whether the job ended (archived),
// and the retry delay the attempt asked for; the pipeline is not run.
func TestAHandedBackTaskReplaysTheAttemptsError(t *testing.T) {
	ran := false
	h := replayOutcome(asynq.HandlerFunc(func(context.Context, *asynq.Task) error { ran = true; return nil }))
	for _, final := range []bool{false, true} {
		headers := map[string]string{headerError: "the provider failed (HTTP 503)", headerDelay: "1500"}
		if final {
			headers[headerFinal] = "1"
		}
		err := h.ProcessTask(context.Background(), asynq.NewTaskWithHeaders(tasks.TypeChatComplete, nil, headers))
		if err == nil || err.Error() != "the provider failed (HTTP 503)" || errors.Is(err, asynq.SkipRetry) != final {
			t.Fatalf("final=%v: replayed %v (skip retry %v)", final, err, errors.Is(err, asynq.SkipRetry))
		}
		if !isFailure(err) {
			t.Fatalf("a replayed failure must count against the retries")
		}
		if d := retryDelay(0, err, nil); d != 1500*time.Millisecond {
			t.Fatalf("retry delay %s, want the attempt's 1.5s", d)
		}
	}
	if ran {
		t.Fatal("a replay ran the pipeline")
	}
	// A task without the headers runs the pipeline.
	if err := h.ProcessTask(context.Background(), asynq.NewTask(tasks.TypeChatComplete, nil)); err != nil || !ran {
		t.Fatalf("plain task: %v, ran %v", err, ran)
	}
}
