package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// largeRequests sends 8 requests of 1 MB (16 tools of a 64 KiB schema) at
// once to /v1/chat/completions through one API and one worker, whose
// replies take half a second, and reports per request, against the body's
// size: the API's RSS at its peak over its idle RSS, and the bytes Redis
// keeps in keys (MEMORY USAGE of every key) at their peak while the jobs
// run and after they have ended.
func (e env) largeRequests() []result {
	const n, tools = 8, 16
	body := testkit.LargeToolsBody("chatfleet", tools)
	mb := float64(len(body)) / 1e6
	api := result{name: "API RSS per 1 MB request, 8 at once (peak over idle)", unit: "MB", target: "(reported)"}
	during := result{name: "Redis bytes per 1 MB request while its job runs", unit: "MB", target: "(reported)"}
	after := result{name: "Redis bytes per 1 MB request after its job", unit: "MB", target: "(reported)"}
	for range reps {
		rd := testkit.StartRedis(e.b)
		env := map[string]string{"CHATFLEET_SIM_LATENCY": "500ms", "CHATFLEET_SIM_TOKENS": "3"}
		w := e.start("worker", e.workerBin, rd, env)
		a := e.start("api", e.apiBin, rd, env)
		idle, kept0 := rss(a.Pid()), keyBytes(e, rd)
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				res, err := httpc.Post(a.URL()+"/v1/chat/completions", "application/json", bytes.NewReader(body))
				if err != nil {
					e.b.Error(err)
					return
				}
				defer res.Body.Close()
				if _, err := io.Copy(io.Discard, res.Body); err != nil || res.StatusCode != http.StatusOK {
					e.b.Errorf("a large request: %d %v", res.StatusCode, err)
				}
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		peakKept := 0.0
		for waiting := true; waiting; {
			select {
			case <-done:
				waiting = false
			case <-time.After(50 * time.Millisecond):
				peakKept = max(peakKept, keyBytes(e, rd))
			}
		}
		api.ours = append(api.ours, (hwm(a.Pid())-idle)/n/1e6)
		during.ours = append(during.ours, (peakKept-kept0)/n/1e6)
		after.ours = append(after.ours, (keyBytes(e, rd)-kept0)/n/1e6)
		for _, r := range []*result{&api, &during, &after} {
			r.base = append(r.base, mb)
		}
		a.Stop()
		w.Stop()
		rd.Stop()
	}
	api.note = fmt.Sprintf("baseline: the body (%.2f MB); the tenant's share of CHATFLEET_MAX_INFLIGHT_BYTES admits all 8", mb)
	during.note = "baseline: the body; the record keeps it once (the task carries the job by reference), sampled every 50 ms"
	after.note = "baseline: the body; what stays is the finished record, its reply and events"
	return []result{api, during, after}
}

// keyBytes is what Redis keeps in keys: MEMORY USAGE of each, every field
// counted (used_memory also moves with the buffers a 1 MB command passes
// through).
func keyBytes(e env, rd *testkit.Redis) float64 {
	ctx := context.Background()
	var sum int64
	iter := rd.Client().Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		n, err := rd.Client().MemoryUsage(ctx, iter.Val(), 0).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			e.b.Fatal(err)
		}
		sum += n
	}
	if err := iter.Err(); err != nil {
		e.b.Fatal(err)
	}
	return float64(sum)
}

// BenchmarkLargeRequests runs only the large-request rows (make bench runs
// them in the report).
func BenchmarkLargeRequests(b *testing.B) {
	e := fleetEnv(b)
	for _, r := range e.largeRequests() {
		b.Logf("%s: %.3g %s (%s) against the body's %.3g: %.2f×; %s", r.name, median(r.ours), r.unit, spread(r.ours), median(r.base), median(r.ours)/median(r.base), r.note)
	}
}
