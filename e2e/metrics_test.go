package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// Every labelled series of the metric contract exists on /metrics before the
// first job, so that rate() and the dashboards have it from the start: each
// labelled counter and gauge of the metric contract, on the process that
// exports it.
func TestLabelledMetricsExistAtStart(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, workers := fleet(t, rd, 1, 1, map[string]string{
		"CHATFLEET_LLM_FALLBACKS": "sim",
		// a misspelling is warned about at start
		"CHATFLEET_WORKER_CONCURENCY": "5",
	})
	for _, p := range []*testkit.Proc{apis[0], workers[0]} {
		if logs := strings.Join(p.Logs(), "\n"); !strings.Contains(logs, "CHATFLEET_WORKER_CONCURENCY: unknown variable") {
			t.Errorf("%s did not warn about the misspelt variable:\n%s", p.Name, logs)
		}
	}
	scrape := func(p *testkit.Proc) string {
		res, err := httpc.Get(p.URL() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("/metrics of %s: %d", p.Name, res.StatusCode)
		}
		return string(b)
	}
	api, worker := scrape(apis[0]), scrape(workers[0])
	want := map[string][]string{
		api: {
			`chatfleet_http_requests_total{code="200",route="/api/v1/chat/jobs"} 0`,
			`chatfleet_queue_backlog{queue="chatfleet-high"} 0`,
			`chatfleet_queue_latency_seconds{queue="chatfleet-low"} 0`,
			`chatfleet_queue_runnable{priority="high"} 0`,
			`chatfleet_queue_blocked{reason="model_capacity"} 0`,
			`chatfleet_queue_blocked{reason="session_order"} 0`,
		},
		worker: {
			`chatfleet_http_requests_total{code="200",route="/health/ready"} 0`,
			`chatfleet_jobs_total{outcome="degraded"} 0`,
			`chatfleet_jobs_total{outcome="succeeded"} 0`,
			`chatfleet_degraded_replies_total{reason="all_open"} 0`,
			`chatfleet_llm_requests_total{outcome="error",provider="sim-1"} 0`,
			`chatfleet_llm_requests_total{outcome="success",provider="sim-2"} 0`,
			`chatfleet_llm_tokens_total{kind="completion",model="sim",provider="sim-1"} 0`,
			`chatfleet_breaker_state{provider="sim-2"} 0`,
			`chatfleet_queue_wait_seconds_count{priority="normal"} 0`,
			`chatfleet_llm_capacity_wait_seconds_count{provider="sim-1"} 0`,
			`chatfleet_llm_rate_limited_total{provider="sim-2"} 0`,
			`chatfleet_llm_inflight{provider="sim-1"} 0`,
			`chatfleet_llm_limiter_errors_total{provider="sim-2"} 0`,
			`chatfleet_llm_limit{kind="rpm",provider="sim-1"} 0`,
			`chatfleet_llm_limit{kind="concurrency",provider="sim-2"} 0`,
			`chatfleet_job_takeovers_total 0`,
			`chatfleet_reconciled_jobs_total{action="released"} 0`,
			`chatfleet_reconciled_jobs_total{action="requeued"} 0`,
		},
	}
	for body, lines := range want {
		for _, l := range lines {
			if !strings.Contains(body, l+"\n") {
				t.Errorf("/metrics lacks %s", l)
			}
		}
	}
}
