package health

import (
	"strings"
	"testing"

	"github.com/chatfleet/chatfleet/tasks"
)

func TestAdvice(t *testing.T) {
	cases := []struct {
		name      string
		backlog   int
		held      int // of the backlog, waiting for a model's quota
		threshold int
		workers   Workers
		rate      float64
		measured  bool
		saturated []string
		want      []string
		wantNot   []string
	}{
		{"empty queue", 0, 0, 500, Workers{Live: 2}, 10, true, nil, []string{"no runnable backlog"}, []string{"quota"}},
		// 6000 jobs of which 5990 wait for a model's quota: workers for 10.
		{"held by a model's quota", 6000, 5990, 500, Workers{Live: 2}, 2, true, nil,
			[]string{"over the alert threshold 500", "10 jobs waiting", "1 workers would drain it", "5990 more wait for their model's quota"}, []string{": add"}},
		{"no worker", 40, 0, 500, Workers{}, 0, false, nil, []string{"40 jobs waiting and no live worker: start workers"}, nil},
		{"nothing measured", 40, 0, 500, Workers{Live: 2}, 0, false, nil, []string{"no completions measured", "check the workers and the providers"}, nil},
		{"provider at its limit", 900, 0, 500, Workers{Live: 2}, 10, true, []string{"openai is at its limit of 600 requests per minute"},
			[]string{"over the alert threshold 500", "adding workers will not help: openai is at its limit of 600 requests per minute", "drains in about 1m30s"}, []string{": add "}},
		// 2 workers at 1 job/s each drain 600 jobs in 300 s = 5 min: enough.
		{"enough workers", 600, 0, 500, Workers{Live: 2}, 2, true, nil,
			[]string{"at 1.00 jobs/s per worker", "drain it in about 5m0s", "2 workers would drain it within 5m0s", "over the alert threshold 500"}, []string{"add"}},
		// 6000 jobs at 1 job/s per worker need 20 workers for 5 minutes.
		{"too few workers", 6000, 0, 500, Workers{Live: 2}, 2, true, nil, []string{"20 workers would drain it", ": add 18"}, nil},
		{"under the threshold", 10, 0, 500, Workers{Live: 1}, 5, true, nil, []string{"1 workers would drain"}, []string{"threshold", "add"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := advise(c.backlog, c.backlog-c.held, c.threshold, c.workers, c.rate, c.measured, c.saturated)
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("advice %q lacks %q", got, w)
				}
			}
			for _, w := range c.wantNot {
				if strings.Contains(got, w) {
					t.Errorf("advice %q has %q", got, w)
				}
			}
		})
	}
}

// A worker's webhook server is not a worker: it runs no chat job, and
// counting it would double the live workers and skew the scaling advice.
func TestWebhookServersAreNotWorkers(t *testing.T) {
	if !servesOurs(map[string]int{"chatfleet-high": 6, "chatfleet-normal": 3}) || !servesOurs(map[string]int{"chatfleet-normal-3": 1}) {
		t.Fatal("a chat worker was not counted")
	}
	if servesOurs(map[string]int{tasks.QueueWebhooks: 1}) || servesOurs(map[string]int{"default": 1}) {
		t.Fatal("a webhook server or a foreign asynq server was counted as a worker")
	}
}
