package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/tasks"
)

func get(t *testing.T, e *echo.Echo, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s: %v: %s", path, err, rec.Body)
	}
	return rec.Code, body
}

// /health/detailed lists each deployment as the callback reads it, read
// again at each request (the models file may have changed), beside the
// breakers map kept for compatibility; a callback that fails leaves the
// list out, not the report. Queue status's advice names the model whose
// deployment is at its limit, from the limiter's state in Redis.
func TestDetailedListsDeploymentsAndAdviceNamesTheModel(t *testing.T) {
	rd := testkit.StartRedis(t)
	rdb := rd.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	specs := []llm.Spec{
		{ID: "alpha-east", Public: "alpha", Kind: "openai", Model: "gpt-4o", Limits: llm.Limits{RPM: 600}},
		{ID: "alpha-west", Public: "alpha", Kind: "openai", Model: "gpt-4o", Limits: llm.Limits{RPM: 300}},
	}
	current := specs[:1]
	fail := false
	f := NewFleet(ctx, rdb, asynq.NewInspectorFromRedisClient(rdb), FleetOptions{Threshold: 500,
		Breakers: func(ctx context.Context) (map[string]string, error) {
			return llm.BreakerStates(ctx, rdb, llm.ProviderNames(current))
		},
		Saturated: func(ctx context.Context) ([]string, error) { return llm.Saturated(ctx, rdb, current) },
		Deployments: func(ctx context.Context) (any, error) {
			if fail {
				return nil, errors.New("redis away")
			}
			return llm.DeploymentStates(ctx, rdb, current, 0.05)
		},
	})
	e := echo.New()
	f.Register(e)

	ids := func(body map[string]any) []string {
		list, _ := body["deployments"].([]any)
		var out []string
		for _, d := range list {
			m, _ := d.(map[string]any)
			id, _ := m["id"].(string)
			out = append(out, id)
		}
		return out
	}
	code, body := get(t, e, "/health/detailed")
	if code != http.StatusOK && code != http.StatusServiceUnavailable { // no worker: degraded
		t.Fatalf("detailed: %d %v", code, body)
	}
	if got := ids(body); len(got) != 1 || got[0] != "alpha-east" {
		t.Fatalf("deployments %v, want alpha-east: %v", got, body)
	}
	d := body["deployments"].([]any)[0].(map[string]any)
	lim, _ := d["limits"].(map[string]any)
	if d["model"] != "alpha" || d["provider"] != "openai" || d["breaker"] != "closed" || d["rpm_effective"] != 570.0 ||
		lim["rpm"] != 600.0 || d["in_flight"] != 0.0 {
		t.Fatalf("deployment: %v", d)
	}
	if b, _ := body["breakers"].(map[string]any); b["alpha-east"] != "closed" {
		t.Fatalf("breakers: %v", body["breakers"])
	}
	// An edit of the models file adds alpha-west: the next request lists it.
	current = specs
	if _, body = get(t, e, "/api/v1/health/detailed"); strings.Join(ids(body), ",") != "alpha-east,alpha-west" {
		t.Fatalf("after the edit: %v", ids(body))
	}
	fail = true
	if _, body = get(t, e, "/health/detailed"); body["deployments"] != nil || body["redis"] == nil {
		t.Fatalf("with the callback failing: %v", body)
	}

	// A job waits (scheduled: no worker runs it), a worker is live, and
	// alpha-east made a call wait for its rpm.
	client := asynq.NewClientFromRedisClient(rdb)
	if _, err := client.Enqueue(asynq.NewTask("chat", nil), asynq.Queue(tasks.QueueName("normal")), asynq.ProcessIn(time.Hour)); err != nil {
		t.Fatal(err)
	}
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{Concurrency: 1, Queues: map[string]int{tasks.QueueName("normal"): 1}})
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error { return nil })); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if err := rdb.Set(ctx, rkeys.ProviderSaturated("alpha-east"), "rpm", 10*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	const want = "adding workers will not help: model alpha's deployment alpha-east is at its limit of 600 requests per minute"
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body = get(t, e, "/health/queue/status")
		advice, _ := body["advice"].(string)
		at, _ := body["providers_at_limit"].([]any)
		if strings.Contains(advice, want) && len(at) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue status: %v", body)
		}
		time.Sleep(200 * time.Millisecond) // the snapshot is kept 2 s; the worker registers within
	}
}
