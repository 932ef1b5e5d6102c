package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// quotaDeployment is one upstream of a burst: its quota, configured exactly
// as the deployment's rpm and concurrency.
type quotaDeployment struct {
	id                string
	perSecond, atOnce int
}

type quotaFigures struct {
	elapsed         time.Duration
	rejected, calls int
	real            bool    // every job answered for real (none degraded or failed)
	commandsPerJob  float64 // Redis commands the burst cost per job
	served          []int   // by deployment
}

// quotaFleet starts an API and 3 workers with env; stop ends them.
func (e env) quotaFleet(rd testkit.Backend, env map[string]string) (api *testkit.Proc, workers []*testkit.Proc, stop func()) {
	api = e.start("api", e.apiBin, rd, env)
	for range 3 {
		workers = append(workers, e.start("worker", e.workerBin, rd, env))
	}
	return api, workers, func() {
		for _, w := range workers {
			w.Stop()
		}
		api.Stop()
	}
}

// quotaBurst runs jobs one-turn jobs at once for one public model through
// an API and 3 workers, over upstreams that answer 429 beyond their quota.
func (e env) quotaBurst(jobs int, deps []quotaDeployment) quotaFigures {
	const callTime = 60 * time.Millisecond
	rd := testkit.StartRedis(e.b)
	defer rd.Stop()
	var file strings.Builder
	file.WriteString("models:\n  - name: alpha\n    deployments:\n")
	var fakes []*llmfake.Fake
	for _, d := range deps {
		f := llmfake.NewOpenAI(e.b)
		f.SetQuota(d.perSecond, d.atOnce)
		f.Always(llmfake.Step{FirstByteDelay: callTime})
		fakes = append(fakes, f)
		fmt.Fprintf(&file, "      - {id: %s, provider: openai, model: m, base_url: %q, api_key_env: UPSTREAM_KEY, rpm: %d, concurrency: %d}\n", d.id, f.URL(), d.perSecond*60, d.atOnce)
	}
	path := filepath.Join(e.b.TempDir(), "models.yaml")
	if err := os.WriteFile(path, []byte(file.String()), 0o600); err != nil {
		e.b.Fatal(err)
	}
	api, workers, stop := e.quotaFleet(rd, map[string]string{"CHATFLEET_MODELS_FILE": path, "UPSTREAM_KEY": llmfake.Key})
	defer stop()
	count := func(outcome string) float64 {
		n := 0.0
		for _, w := range workers {
			n += metric(w.URL(), `chatfleet_jobs_total{outcome="`+outcome+`"}`)
		}
		return n
	}
	before := redisInfo(rd, "stats")["total_commands_processed"]
	start := time.Now()
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Go(func() {
			if _, err := submit(api.URL(), "burst-"+strconv.Itoa(i), "hello "+strconv.Itoa(i)); err != nil {
				e.b.Error(err)
			}
		})
	}
	wg.Wait()
	for count("succeeded")+count("failed")+count("degraded") < float64(jobs) {
		if time.Since(start) > 2*time.Minute {
			e.b.Fatalf("the burst did not end in 2 minutes")
		}
		time.Sleep(10 * time.Millisecond)
	}
	out := quotaFigures{elapsed: time.Since(start), real: count("succeeded") == float64(jobs) && count("degraded") == 0}
	out.commandsPerJob = (redisInfo(rd, "stats")["total_commands_processed"] - before) / float64(jobs)
	for _, f := range fakes {
		served, rejected, _ := f.QuotaStats()
		out.served = append(out.served, served)
		out.rejected += rejected
		out.calls += served + rejected
	}
	return out
}

// A burst for one public model over two deployments whose quotas are
// configured exactly (20 and 10 calls a second, 10 and 5 at once), against
// the same burst over one deployment with their combined quota (30 a
// second, 15 at once): both have the same floor, the time the quota allows.
func (e env) deploymentsBurst() result {
	const jobs, perSecond = 180, 30
	floor := (float64(jobs-perSecond)/perSecond + 0.06)
	r := result{name: fmt.Sprintf("Burst of %d jobs for one model over two deployments at their configured quotas", jobs), unit: "s",
		target: "≤ 1.3× the quota's time, ≤ 5 % 429s, every answer real"}
	var notes []string
	ok := true
	for range reps {
		two := e.quotaBurst(jobs, []quotaDeployment{{"big", 20, 10}, {"small", 10, 5}})
		one := e.quotaBurst(jobs, []quotaDeployment{{"one", 30, 15}})
		r.ours = append(r.ours, two.elapsed.Seconds())
		r.base = append(r.base, one.elapsed.Seconds())
		ok = ok && two.real && two.elapsed.Seconds() <= 1.3*floor && two.rejected*20 <= two.calls
		notes = append(notes, fmt.Sprintf("two: %.2f× the floor, %d of %d calls 429, served %v, %.0f Redis commands a job; one: %.2f×, %d 429, %.0f commands a job",
			two.elapsed.Seconds()/floor, two.rejected, two.calls, two.served, two.commandsPerJob, one.elapsed.Seconds()/floor, one.rejected, one.commandsPerJob))
	}
	r.met = func(float64) bool { return ok }
	r.note = fmt.Sprintf("the quota's floor is %.2f s; baseline: one deployment with the combined quota. ", floor) + strings.Join(notes, "; ")
	return r
}
