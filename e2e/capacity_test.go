package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// The upstream's quota in the burst tests: perSecond calls a second (a
// bucket that starts full), atOnce in flight; beyond, 429 with Retry-After: 1.
const (
	quotaPerSecond = 20
	quotaAtOnce    = 10
	burstJobs      = 120
)

type burstResult struct {
	elapsed, floor           time.Duration
	served, rejected, maxFly int
}

const burstCallTime = 60 * time.Millisecond

// runBurst submits jobs jobs at once to a fleet of 3 workers over a
// quota-limited upstream (a bucket, or a sliding window when window is set)
// and waits for all of them. Every job must end with a real reply (not
// degraded) and the breaker must stay closed.
func runBurst(t *testing.T, jobs int, window bool, extra map[string]string) burstResult {
	fake := llmfake.NewOpenAI(t)
	if window {
		fake.SetWindowQuota(quotaPerSecond, quotaAtOnce)
	} else {
		fake.SetQuota(quotaPerSecond, quotaAtOnce)
	}
	fake.Always(llmfake.Step{FirstByteDelay: burstCallTime})
	r := burst(t, jobs, providerEnv(fake, extra), map[string]*llmfake.Fake{"openai": fake})
	r.served, r.rejected, r.maxFly = fake.QuotaStats()
	r.floor = quotaFloor(jobs, quotaPerSecond)
	r.log(t, jobs)
	if r.served != jobs {
		t.Errorf("the upstream served %d calls for %d jobs", r.served, jobs)
	}
	return r
}

// quotaFloor is the time a quota of perSecond allows a burst of jobs: the
// first perSecond calls at once, the rest at perSecond a second, then the
// last call's own time.
func quotaFloor(jobs, perSecond int) time.Duration {
	return time.Duration(float64(jobs-perSecond)/float64(perSecond)*float64(time.Second)) + burstCallTime
}

func (r burstResult) log(t *testing.T, jobs int) {
	t.Logf("%d jobs in %s (quota floor %s, ratio %.2f); upstream served %d, answered 429 %d times (%.1f%% of calls), at most %d at once",
		jobs, r.elapsed.Round(time.Millisecond), r.floor, float64(r.elapsed)/float64(r.floor), r.served, r.rejected,
		100*float64(r.rejected)/float64(r.served+r.rejected), r.maxFly)
}

// burst runs jobs jobs at once through a fleet of 3 workers configured by
// env over upstreams (by deployment name); every job must end with a real
// reply and every deployment's breaker stay closed.
func burst(t *testing.T, jobs int, env map[string]string, upstreams map[string]*llmfake.Fake) burstResult {
	rd := testkit.StartRedis(t)
	apis, workers := fleet(t, rd, 1, 3, env)
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	commands := func() float64 {
		v, _ := strconv.ParseFloat(infoField(t, rd, "total_commands_processed"), 64)
		return v
	}
	before := commands()
	start := time.Now()
	ids := make([]string, jobs)
	var wg sync.WaitGroup
	errs := make(chan error, jobs)
	for i := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: fmt.Sprintf("burst-%d", i), Message: fmt.Sprintf("hello %d", i)})
			if err != nil {
				errs <- err
				return
			}
			ids[i] = sub.JobID
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	degraded, failed := 0, 0
	for _, id := range ids {
		j, err := c.Wait(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case j.Status != "succeeded":
			failed++
			t.Errorf("job %s ended %s: %+v", id, j.Status, j.Error)
		case j.Result.Degraded:
			degraded++
		}
	}
	elapsed := time.Since(start)
	if degraded > 0 || failed > 0 {
		t.Fatalf("%d of %d jobs degraded, %d failed", degraded, jobs, failed)
	}
	for _, w := range workers {
		for name := range upstreams {
			if v, _ := labelled(t, w.URL(), fmt.Sprintf(`chatfleet_breaker_state{provider=%q}`, name)); v != 0 {
				t.Errorf("%s: breaker state of %s %v, want closed", w.Name, name, v)
			}
		}
	}
	t.Logf("Redis commands per job: %.0f", (commands()-before)/float64(jobs))
	return burstResult{elapsed: elapsed}
}

// configuredQuota sets the fleet's limits to exactly the upstream's quota.
var configuredQuota = map[string]string{
	"CHATFLEET_LLM_RPM": fmt.Sprint(quotaPerSecond * 60), "CHATFLEET_LLM_MAX_CONCURRENCY": fmt.Sprint(quotaAtOnce),
}

// slowestBurst is how much longer than the quota's floor a burst may take
// here: twice, against the 1.2–1.3× that make bench measures on a quiet
// machine (its "Burst of 180 jobs" row and the note of its one-deployment
// baseline). The suite runs under -race beside other tests on 2 cores, so it
// checks what does not move with the machine (no call over the concurrency
// quota, at most 5 % 429s, every answer real) and only catches a fleet that
// feeds the upstream at well under its rate; the bench holds the figure.
const slowestBurst = 2.0

// checkConfiguredBurst holds a burst at a configured quota to its targets:
// never over the concurrency quota, at most 5 % of calls 429, within
// slowestBurst × the time the quota allows.
func checkConfiguredBurst(t *testing.T, run func() burstResult) {
	t.Helper()
	r := run()
	if r.maxFly > quotaAtOnce {
		t.Errorf("the upstream saw %d calls at once, its quota is %d", r.maxFly, quotaAtOnce)
	}
	if limit := (r.served + r.rejected) * 5 / 100; r.rejected > limit {
		t.Errorf("%d calls rejected with 429, more than 5%% (%d)", r.rejected, limit)
	}
	if ratio := float64(r.elapsed) / float64(r.floor); ratio > slowestBurst {
		t.Errorf("the burst took %.2f× what the quota allows, want at most %.1f×", ratio, slowestBurst)
	}
}

// One public model on two deployments whose quotas are configured exactly
// (20 and 10 calls a second, 10 and 5 at once): a burst is fed to both at
// the rate each accepts, each within its own quota, every job answered for
// real, at most 5 % of calls 429, within slowestBurst × the time the
// combined quota allows.
func TestBurstOverTwoDeploymentsWithinTheirQuotas(t *testing.T) {
	const jobs = 180
	r := twoDeploymentBurst(t, jobs)
	if ratio := float64(r.elapsed) / float64(r.floor); ratio > slowestBurst {
		t.Errorf("the burst took %.2f× what the quota allows, want at most %.1f×", ratio, slowestBurst)
	}
}

// twoDeploymentBurst runs the burst over big (20/s, 10 at once) and small
// (10/s, 5 at once) and checks all but its time.
func twoDeploymentBurst(t *testing.T, jobs int) burstResult {
	big, small := quotaFake(t, quotaPerSecond, quotaAtOnce), quotaFake(t, quotaPerSecond/2, quotaAtOnce/2)
	path := alphaModelsFile(t, map[string]*llmfake.Fake{"big": big, "small": small},
		map[string][2]int{"big": {quotaPerSecond * 60, quotaAtOnce}, "small": {quotaPerSecond * 30, quotaAtOnce / 2}})
	r := burst(t, jobs, map[string]string{"CHATFLEET_MODELS_FILE": path, "UPSTREAM_KEY": llmfake.Key}, map[string]*llmfake.Fake{"big": big, "small": small})
	bigServed, bigRejected, bigFly := big.QuotaStats()
	smallServed, smallRejected, smallFly := small.QuotaStats()
	r.served, r.rejected, r.maxFly = bigServed+smallServed, bigRejected+smallRejected, max(bigFly, smallFly)
	r.floor = quotaFloor(jobs, quotaPerSecond+quotaPerSecond/2)
	r.log(t, jobs)
	t.Logf("big served %d (429 %d, %d at once), small %d (429 %d, %d at once)", bigServed, bigRejected, bigFly, smallServed, smallRejected, smallFly)
	if r.served != jobs {
		t.Errorf("the upstreams served %d calls for %d jobs", r.served, jobs)
	}
	if bigFly > quotaAtOnce || smallFly > quotaAtOnce/2 {
		t.Errorf("calls at once: big %d (quota %d), small %d (quota %d)", bigFly, quotaAtOnce, smallFly, quotaAtOnce/2)
	}
	if limit := (r.served + r.rejected) * 5 / 100; r.rejected > limit {
		t.Errorf("%d calls rejected with 429, more than 5%% (%d)", r.rejected, limit)
	}
	return r
}

// quotaFake is an OpenAI-compatible upstream with a quota, answering after
// burstCallTime.
func quotaFake(t *testing.T, perSecond, atOnce int) *llmfake.Fake {
	f := llmfake.NewOpenAI(t)
	f.SetQuota(perSecond, atOnce)
	f.Always(llmfake.Step{FirstByteDelay: burstCallTime})
	return f
}

// alphaModelsFile writes a models file of one model, alpha, served by the
// given upstreams (by deployment id) with their rpm and concurrency.
func alphaModelsFile(t *testing.T, fakes map[string]*llmfake.Fake, limits map[string][2]int) string {
	t.Helper()
	ids := make([]string, 0, len(fakes))
	for id := range fakes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	file := "models:\n  - name: alpha\n    deployments:\n"
	for _, id := range ids {
		file += fmt.Sprintf("      - {id: %s, provider: openai, model: m, base_url: %q, api_key_env: UPSTREAM_KEY, rpm: %d, concurrency: %d}\n", id, fakes[id].URL(), limits[id][0], limits[id][1])
	}
	path := filepath.Join(t.TempDir(), "models.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// With the fleet's limits set to the upstream's quota, a burst waits in the
// queue and is fed to the upstream at the rate it accepts.
func TestBurstWithinConfiguredQuota(t *testing.T) {
	checkConfiguredBurst(t, func() burstResult { return runBurst(t, burstJobs, false, configuredQuota) })
}

// The same against an upstream that counts its quota in a sliding
// one-second window (stricter at the edge than a bucket), with a burst of
// eleven seconds of quota.
func TestBurstAtAStrictWindowQuota(t *testing.T) {
	checkConfiguredBurst(t, func() burstResult { return runBurst(t, 11*quotaPerSecond, true, configuredQuota) })
}

// With nothing configured the fleet learns the upstream's capacity from its
// 429s (a fleet-wide pause per Retry-After, a halved concurrency limit) and
// still answers every job for real.
func TestBurstAdaptsWithoutLimits(t *testing.T) {
	r := runBurst(t, burstJobs, false, nil)
	if r.rejected >= burstJobs {
		t.Errorf("%d calls rejected with 429 for %d jobs: the fleet hammered the upstream", r.rejected, burstJobs)
	}
	if ratio := float64(r.elapsed) / float64(r.floor); ratio > 4 {
		t.Errorf("the burst took %.2f× what the quota allows, want at most 4×", ratio)
	}
}

// A 429 whose Retry-After reaches far past the job's retention: the wait is
// capped by CHATFLEET_MAX_RETRY_DELAY, the job waits in the queue without
// losing its record, and runs.
func TestHugeRetryAfterIsCappedAndTheJobRuns(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	var mu sync.Mutex
	var calls []time.Time // when each call reached the provider
	fake.SetPlan(func(call int) llmfake.Step {
		mu.Lock()
		calls = append(calls, time.Now())
		mu.Unlock()
		if call == 1 {
			return llmfake.Step{Status: 429, Message: "slow down", RetryAfter: "90000"}
		}
		return llmfake.Step{}
	})
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, map[string]string{
		"CHATFLEET_JOB_RETENTION": "2s", "CHATFLEET_MAX_RETRY_DELAY": "7s", "CHATFLEET_MAX_RETRIES": "0",
	}))
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "patient", Message: "wait for it"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	j, err := c.Wait(ctx, sub.JobID)
	if err != nil {
		t.Fatal(err)
	}
	if j.Status != "succeeded" || j.Result.Degraded || j.Result.Content != llmfake.Reply("wait for it") || j.Attempts != 1 {
		t.Fatalf("job: %+v", j)
	}
	if fake.Calls() != 2 || len(calls) != 2 {
		t.Fatalf("upstream calls %d, want 2", fake.Calls())
	}
	// The Retry-After was honoured up to the cap: the second call came no
	// sooner than 7 s after the first (a lower bound: a slow machine only
	// adds to it), and far sooner than the 90,000 s asked for.
	if waited := calls[1].Sub(calls[0]); waited < 7*time.Second-100*time.Millisecond || waited > 30*time.Second {
		t.Fatalf("the second call came %s after the 429, want the capped 7s", waited)
	}
	t.Logf("ran %s after the 429 (Retry-After capped at 7s, retention 2s)", time.Since(start).Round(time.Millisecond))
}

// infoField is one field of a Redis server's INFO.
func infoField(t *testing.T, rd *testkit.Redis, field string) string {
	t.Helper()
	raw, err := rd.Client().Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(raw, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == field {
			return v
		}
	}
	return ""
}
