package orchestration

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
)

func TestMiddlewareLogsCountsAndRecovers(t *testing.T) {
	var logs bytes.Buffer
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "active"})
	var during float64
	handler := asynq.HandlerFunc(func(ctx context.Context, _ *asynq.Task) error {
		during = testutil.ToFloat64(gauge)
		zerolog.Ctx(ctx).Info().Msg("inside")
		panic("boom")
	})
	h := withJobLogger(zerolog.New(&logs))(countActive(gauge)(recoverPanics(handler)))
	err := h.ProcessTask(context.Background(), asynq.NewTask("t", nil))
	if err == nil || !strings.Contains(err.Error(), "panicked: boom") {
		t.Fatalf("a panic became %v", err)
	}
	if during != 1 || testutil.ToFloat64(gauge) != 0 {
		t.Fatalf("active gauge %v during, %v after", during, testutil.ToFloat64(gauge))
	}
	out := logs.String()
	if !strings.Contains(out, `"job_id":""`) || !strings.Contains(out, `"message":"inside"`) ||
		!strings.Contains(out, `"message":"job handler panicked"`) || !strings.Contains(out, `"stack"`) {
		t.Fatalf("logs: %s", out)
	}
}
