package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// Who runs next: one worker of 8 slots whose replies take about a second,
// and a burst that fills its queue. A tenant's few jobs are not stuck
// behind another tenant's burst, the slots stay busy, weights share the
// slots, a high-priority job overtakes the backlog, and a model at its quota
// waits in Redis without holding the slots another model's jobs need.

const (
	schedSlots = 8
	// schedSlack is how much a measured wait may exceed its bound: the
	// submits, a dispatch and the jitter of three processes on two cores
	// take tens of milliseconds. It stays well under one job's time, so a
	// job that waited one more round of the slots still fails.
	schedSlack = 300 * time.Millisecond
)

// schedulerFleet starts one API and one worker of schedSlots slots whose
// simulated replies take a second, for tenants acme and beta.
func schedulerFleet(t *testing.T, extra map[string]string) (acme, beta *client.Client) {
	t.Helper()
	env := map[string]string{
		"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_WORKER_CONCURRENCY": fmt.Sprint(schedSlots), "CHATFLEET_SIM_LATENCY": "1s",
	}
	maps.Copy(env, extra)
	apis, _ := fleet(t, testkit.StartRedis(t), 1, 1, env)
	return client.New(apis[0].URL(), client.WithAPIKey(keyAcme)), client.New(apis[0].URL(), client.WithAPIKey(keyBeta))
}

// submitAll submits n jobs like req at once (16 requests at a time), each
// in a session of its own (prefix-i: a session's jobs would run one after
// another), and returns their ids in order.
func submitAll(t *testing.T, ctx context.Context, c *client.Client, n int, prefix string, req client.SubmitRequest) []string {
	t.Helper()
	ids := make([]string, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			r := req
			r.SessionID, r.Message = fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("%s job %d", prefix, i)
			sub, err := c.Submit(ctx, r)
			if err != nil {
				errs <- fmt.Errorf("submit %s-%d: %w", prefix, i, err)
				return
			}
			ids[i] = sub.JobID
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return ids
}

// finished waits for the jobs and returns their records; each must have
// succeeded with a real reply.
func finished(t *testing.T, ctx context.Context, c *client.Client, ids []string) []client.Job {
	t.Helper()
	jobs := make([]client.Job, len(ids))
	for i, id := range ids {
		j, err := c.Wait(ctx, id)
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		if j.Status != "succeeded" || j.Result == nil || j.Result.Degraded || j.CreatedAt == nil || j.StartedAt == nil || j.FinishedAt == nil {
			t.Fatalf("job %s did not succeed: %+v", id, j)
		}
		jobs[i] = j
	}
	return jobs
}

// elapsed is the time from the first of the jobs' submits to the last one's end.
func elapsed(jobs ...[]client.Job) time.Duration {
	var first, last time.Time
	for _, js := range jobs {
		for _, j := range js {
			if first.IsZero() || j.CreatedAt.Before(first) {
				first = *j.CreatedAt
			}
			if j.FinishedAt.After(last) {
				last = *j.FinishedAt
			}
		}
	}
	return last.Sub(first)
}

// runTime is one job's time: the jobs' mean time from start to end.
func runTime(jobs []client.Job) time.Duration {
	var sum time.Duration
	for _, j := range jobs {
		sum += j.FinishedAt.Sub(*j.StartedAt)
	}
	return sum / time.Duration(len(jobs))
}

// Tenant beta's 4 jobs behind acme's burst of 160 end within their time
// alone plus one job's time (the time for a slot to free up): beta does not
// wait for acme's backlog. And fairness costs no throughput: the 164 jobs
// end within 1.15× the time the 8 slots need for them.
func TestSchedulerNoisyNeighbour(t *testing.T) {
	acme, beta := schedulerFleet(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	alone := finished(t, ctx, beta, submitAll(t, ctx, beta, 4, "beta-alone", client.SubmitRequest{}))
	job := runTime(alone)

	burstIDs := submitAll(t, ctx, acme, 160, "acme-burst", client.SubmitRequest{})
	fewIDs := submitAll(t, ctx, beta, 4, "beta-few", client.SubmitRequest{})
	few := finished(t, ctx, beta, fewIDs)
	burst := finished(t, ctx, acme, burstIDs)

	bound := elapsed(alone) + job + schedSlack
	t.Logf("beta's 4 jobs: %s alone, %s behind acme's 160 (bound %s: alone + one job's %s + %s)",
		elapsed(alone).Round(time.Millisecond), elapsed(few).Round(time.Millisecond), bound.Round(time.Millisecond), job.Round(time.Millisecond), schedSlack)
	if elapsed(few) > bound {
		t.Errorf("beta's 4 jobs took %s behind acme's burst, more than %s: they waited for acme's backlog", elapsed(few).Round(time.Millisecond), bound.Round(time.Millisecond))
	}

	ideal := time.Duration(len(burst)+len(few)) * job / schedSlots
	took := elapsed(burst, few)
	ratio := float64(took) / float64(ideal)
	t.Logf("all %d jobs in %s; %d slots need %s (ratio %.3f)", len(burst)+len(few), took.Round(time.Millisecond), schedSlots, ideal.Round(time.Millisecond), ratio)
	if ratio > 1.15 {
		t.Errorf("the %d jobs took %.3f× the slots' time, want at most 1.15×: slots stood idle", len(burst)+len(few), ratio)
	}
}

// With weights acme 3 and beta 1 (beta's by default) and both backlogged,
// acme gets three of every four slots that free up: of the first 40 jobs
// started, 28 to 36 are acme's. Three quarters of 40 is 30; acme submits
// first, so the first round may be all acme's (32).
func TestSchedulerTenantWeights(t *testing.T) {
	acme, beta := schedulerFleet(t, map[string]string{"CHATFLEET_TENANT_WEIGHTS": "acme:3"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	acmeIDs := submitAll(t, ctx, acme, 80, "acme-weighted", client.SubmitRequest{})
	betaIDs := submitAll(t, ctx, beta, 80, "beta-weighted", client.SubmitRequest{})
	started := append(finished(t, ctx, acme, acmeIDs), finished(t, ctx, beta, betaIDs)...)
	slices.SortStableFunc(started, func(a, b client.Job) int { return a.StartedAt.Compare(*b.StartedAt) })

	isAcme := make(map[string]bool, len(acmeIDs))
	for _, id := range acmeIDs {
		isAcme[id] = true
	}
	const first = 40
	acmeFirst := 0
	rounds := make([]int, first/schedSlots) // acme's jobs in each round of the slots
	for i, j := range started[:first] {
		if isAcme[j.JobID] {
			acmeFirst++
			rounds[i/schedSlots]++
		}
	}
	t.Logf("of the first %d jobs started, %d are acme's (want 28–36); acme's per round of %d: %v", first, acmeFirst, schedSlots, rounds)
	if acmeFirst < 28 || acmeFirst > 36 {
		t.Errorf("acme has %d of the first %d jobs started, want 28–36 (weights 3:1)", acmeFirst, first)
	}
}

// A high-priority job submitted behind 160 normal ones of its tenant ends
// within its time alone plus one job's time: it takes one of the first
// slots that free up.
func TestSchedulerHighPriorityOvertakes(t *testing.T) {
	acme, _ := schedulerFleet(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	high := client.SubmitRequest{Priority: "high"}

	alone := finished(t, ctx, acme, submitAll(t, ctx, acme, 1, "high-alone", high))
	job := runTime(alone)

	backlog := submitAll(t, ctx, acme, 160, "normal", client.SubmitRequest{})
	urgent := finished(t, ctx, acme, submitAll(t, ctx, acme, 1, "high", high))[0]
	ahead := 0 // normal jobs started before the high one
	for _, id := range backlog {
		j, err := acme.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.StartedAt != nil && j.StartedAt.Before(*urgent.StartedAt) {
			ahead++
		}
	}

	bound := elapsed(alone) + job + schedSlack
	took := elapsed([]client.Job{urgent})
	t.Logf("the high job: %s alone, %s behind 160 normal jobs, %d of which started before it (bound %s: alone + one job's %s + %s)",
		elapsed(alone).Round(time.Millisecond), took.Round(time.Millisecond), ahead, bound.Round(time.Millisecond), job.Round(time.Millisecond), schedSlack)
	if took > bound {
		t.Errorf("the high job took %s behind the backlog, more than %s", took.Round(time.Millisecond), bound.Round(time.Millisecond))
	}
}

// A model at its quota holds no worker slot while its jobs wait. Model
// capped (one deployment, rpm 60) has 40 jobs queued, then model free (no
// limit) 8: free's jobs end within their time alone plus one job's time,
// and no capped job is active while it waits for capacity: sampled every
// 50 ms, the capped jobs active never outnumber the calls its upstream is
// answering plus one (a job on its way to the upstream, or writing its
// reply).
func TestSchedulerModelAtQuotaHoldsNoSlots(t *testing.T) {
	capped, free := llmfake.NewOpenAI(t), llmfake.NewOpenAI(t)
	// A capped call is short against the second its quota puts between
	// calls, so that calls whose jobs wait for capacity in Redis never overlap.
	capped.Always(llmfake.Step{FirstByteDelay: 300 * time.Millisecond})
	free.Always(llmfake.Step{FirstByteDelay: time.Second})
	path := filepath.Join(t.TempDir(), "models.yaml")
	file := fmt.Sprintf(`models:
  - name: capped
    deployments:
      - {provider: openai, model: m, base_url: %q, api_key_env: UPSTREAM_KEY, rpm: 60}
  - name: free
    deployments:
      - {provider: openai, model: m, base_url: %q, api_key_env: UPSTREAM_KEY}
`, capped.URL(), free.URL())
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	apis, _ := fleet(t, testkit.StartRedis(t), 1, 1, map[string]string{
		"CHATFLEET_MODELS_FILE": path, "UPSTREAM_KEY": llmfake.Key, "CHATFLEET_WORKER_CONCURRENCY": fmt.Sprint(schedSlots),
	})
	c := client.New(apis[0].URL())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	alone := finished(t, ctx, c, submitAll(t, ctx, c, 8, "free-alone", client.SubmitRequest{Model: "free"}))
	job := runTime(alone)

	stop := make(chan struct{})
	sampled := make(chan activeSamples, 1)
	go func() { sampled <- sampleActive(apis[0].URL(), "capped-", capped, stop) }()
	cappedIDs := submitAll(t, ctx, c, 40, "capped", client.SubmitRequest{Model: "capped"})
	few := finished(t, ctx, c, submitAll(t, ctx, c, 8, "free", client.SubmitRequest{Model: "free"}))
	cappedJobs := finished(t, ctx, c, cappedIDs)
	close(stop)
	s := <-sampled

	bound := elapsed(alone) + job + schedSlack
	// A job keeps the started_at of its first attempt: one that ran far
	// longer than its call was started, and handed back, while it waited.
	early := 0
	for _, j := range cappedJobs {
		if j.FinishedAt.Sub(*j.StartedAt) > 300*time.Millisecond+time.Second {
			early++
		}
	}
	t.Logf("free's 8 jobs: %s alone, %s behind capped's 40 (bound %s: alone + one job's %s + %s); capped's 40 in %s, %d of them started over a second before their call ended",
		elapsed(alone).Round(time.Millisecond), elapsed(few).Round(time.Millisecond), bound.Round(time.Millisecond), job.Round(time.Millisecond), schedSlack,
		elapsed(cappedJobs).Round(time.Millisecond), early)
	if elapsed(few) > bound {
		t.Errorf("free's 8 jobs took %s behind capped's backlog, more than %s: capped's jobs held the slots", elapsed(few).Round(time.Millisecond), bound.Round(time.Millisecond))
	}
	if s.err != nil {
		t.Fatalf("sampling the active jobs: %v", s.err)
	}
	t.Logf("%d samples of capped's active jobs; %d over the calls in flight plus one, the worst %d active with %d in flight, %s after the first sample",
		s.n, s.over, s.worst.active, s.worst.inflight, s.worst.at.Round(time.Millisecond))
	if s.n < 100 {
		t.Errorf("only %d samples were taken while capped's jobs waited", s.n)
	}
	if s.over > 0 {
		t.Errorf("%d of %d samples found more capped jobs active than calls in flight plus one (worst: %d active, %d in flight): jobs held slots while they waited for capacity",
			s.over, s.n, s.worst.active, s.worst.inflight)
	}
}

// activeSamples is what sampling a model's active jobs found: the samples
// taken, how many had more jobs active than calls in flight plus one, and
// the worst.
type activeSamples struct {
	n, over int
	worst   activeSample
	err     error
}

type activeSample struct {
	active, inflight int
	at               time.Duration // since the first sample
}

// sampleActive counts, every 50 ms until stop, the jobs whose session starts
// with prefix and whose status is active (one list request, so that the
// count is of one moment), against the calls upstream answers. A call counts
// as in flight if it was before or after the list was read: a sample must
// not blame the scheduler for the moment between two reads.
func sampleActive(base, prefix string, upstream *llmfake.Fake, stop <-chan struct{}) activeSamples {
	var s activeSamples
	start := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return s
		case <-tick.C:
		}
		before := upstream.InFlight()
		active, err := countActive(base, prefix)
		if err != nil {
			s.err = err
			return s
		}
		cur := activeSample{active: active, inflight: max(before, upstream.InFlight()), at: time.Since(start)}
		s.n++
		if cur.active > cur.inflight+1 {
			s.over++
		}
		if s.n == 1 || cur.active-cur.inflight > s.worst.active-s.worst.inflight {
			s.worst = cur
		}
	}
}

// countActive is how many of the jobs whose session starts with prefix are
// active, by the jobs list (which holds at most 100, more than the test's).
func countActive(base, prefix string) (int, error) {
	res, err := httpc.Get(base + "/api/v1/chat/jobs?status=active&limit=100")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var list struct {
		Data []struct {
			SessionID string `json:"session_id"`
			Status    string `json:"status"`
		} `json:"data"`
	}
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("list jobs: %s", res.Status)
	}
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		return 0, err
	}
	n := 0
	for _, j := range list.Data {
		if j.Status == "active" && strings.HasPrefix(j.SessionID, prefix) {
			n++
		}
	}
	return n, nil
}
