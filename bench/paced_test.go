package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/config"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// Replies at the pace real models stream: 40 tokens 50 ms apart (2 s), as
// against the same 40 tokens all at once, with one worker at concurrency
// 2,000. What Redis spends per job, with and without a live follower, and
// whether the worker fills its slots.

const (
	pacedTokens = 40
	pacedDelay  = 50 * time.Millisecond
	pacedConc   = 2000
)

// pacedFigures is one run's measurements.
type pacedFigures struct {
	cpuPerJob  float64 // Redis CPU (user + sys), µs per job
	cmdsPerJob float64 // commands Redis processed per job (sent by clients)
	took       time.Duration
	peak       int       // jobs in flight on the worker at the peak
	rssPerJob  float64   // worker RSS growth at the peak over its idle RSS, KB per job in flight
	late       []float64 // ms, each token event's first word (followed runs)
	wordLate   []float64 // ms, every word
	firstLate  []float64 // ms, each reply's first word

	gaps []float64 // ms between a follower's token events
}

// commandStats is Redis's time spent (µs) and calls, by command.
func commandStats(rd *testkit.Redis) map[string][2]float64 {
	raw, _ := rd.Client().Info(context.Background(), "commandstats").Result()
	out := map[string][2]float64{}
	for _, l := range strings.Split(raw, "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(l, "cmdstat_"), ":")
		if !ok {
			continue
		}
		var calls, usec float64
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			f, _ := strconv.ParseFloat(v, 64)
			switch k {
			case "calls":
				calls = f
			case "usec":
				usec = f
			}
		}
		out[name] = [2]float64{usec, calls}
	}
	return out
}

// commandTime is the commands that took the most of Redis's time since
// before, per job: µs and calls.
func commandTime(rd *testkit.Redis, before map[string][2]float64, n int) string {
	type row struct {
		name        string
		usec, calls float64
	}
	var rows []row
	for name, v := range commandStats(rd) {
		rows = append(rows, row{name, (v[0] - before[name][0]) / float64(n), (v[1] - before[name][1]) / float64(n)})
	}
	slices.SortFunc(rows, func(a, b row) int { return int(b.usec - a.usec) })
	var out []string
	for _, r := range rows[:min(len(rows), 12)] {
		out = append(out, fmt.Sprintf("%s %.1f µs %.1f calls", r.name, r.usec, r.calls))
	}
	return strings.Join(out, "; ")
}

func redisInfo(rd *testkit.Redis, section string) map[string]float64 {
	raw, err := rd.Client().Info(context.Background(), section).Result()
	out := map[string]float64{}
	if err != nil {
		return out
	}
	for _, l := range strings.Split(raw, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				out[k] = f
			}
		}
	}
	return out
}

func redisCPU(rd *testkit.Redis) float64 {
	c := redisInfo(rd, "cpu")
	return c["used_cpu_user"] + c["used_cpu_sys"]
}

// pacedRun submits n one-turn jobs through one API, then starts one worker
// at concurrency conc and times it through them; delay paces the tokens (0:
// all at once). With follow, every job is followed over SSE from before the
// worker starts, and each word's lateness is measured: how long after the
// model produced it it reached the follower (lateness).
func (e env) pacedRun(n, conc int, delay time.Duration, follow bool, workerEnv map[string]string) pacedFigures {
	rd := testkit.StartRedis(e.b)
	defer rd.Stop()
	api := e.start("api", e.apiBin, rd, map[string]string{"CHATFLEET_TENANT_MAX_STREAMS": "0"})
	defer api.Stop()
	ids := e.submitMany(api.URL(), "paced-", n)
	var f pacedFigures
	var lateMu sync.Mutex
	var followers sync.WaitGroup
	if follow {
		sc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1}}
		var opened atomic.Int64
		for i := range n {
			followers.Add(1)
			go func() {
				defer followers.Done()
				res, err := sc.Get(api.URL() + "/api/v1/chat/jobs/" + ids[i] + "/stream")
				if err != nil {
					e.b.Error(err)
					return
				}
				defer res.Body.Close()
				opened.Add(1)
				r := lateness(follow1(bufio.NewScanner(res.Body)))
				lateMu.Lock()
				f.late, f.wordLate, f.gaps = append(f.late, r.late...), append(f.wordLate, r.wordLate...), append(f.gaps, r.gaps...)
				f.firstLate = append(f.firstLate, r.firstLate...)
				lateMu.Unlock()
			}()
		}
		for opened.Load() < int64(n) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // the API has subscribed
	}
	cpu0, cmd0, stats0 := redisCPU(rd), redisInfo(rd, "stats")["total_commands_processed"], commandStats(rd)
	start := time.Now()
	wenv := map[string]string{
		"CHATFLEET_SIM_TOKENS": strconv.Itoa(pacedTokens - 1), "CHATFLEET_SIM_TOKEN_DELAY": delay.String(),
		"CHATFLEET_SIM_STAMPS":         strconv.FormatBool(follow),
		"CHATFLEET_WORKER_CONCURRENCY": strconv.Itoa(conc),
	}
	for k, v := range workerEnv {
		wenv[k] = v
	}
	worker := e.start("worker", e.workerBin, rd, wenv)
	defer worker.Stop()
	idle := rss(worker.Pid())
	var peakRSS float64
	for {
		done := metric(worker.URL(), `chatfleet_jobs_total{outcome="succeeded"}`)
		if active := int(metric(worker.URL(), "chatfleet_active_jobs")); active > f.peak {
			f.peak, peakRSS = active, rss(worker.Pid())
		}
		if done >= float64(n) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.took = time.Since(start)
	followers.Wait()
	f.cpuPerJob = (redisCPU(rd) - cpu0) / float64(n) * 1e6
	f.cmdsPerJob = (redisInfo(rd, "stats")["total_commands_processed"] - cmd0) / float64(n)
	if os.Getenv("BENCH_PACED_WINDOWS") != "" {
		e.b.Logf("Redis time per job by command: %s", commandTime(rd, stats0, n))
	}
	if f.peak > 0 {
		f.rssPerJob = (peakRSS - idle) / float64(f.peak) / 1024
	}
	return f
}

// followed is what a follower saw of one job's tokens, in ms: how late each
// token event's first word came, how late each word came, the gaps between
// token events, and how late the reply's first word came.
type followed struct{ late, wordLate, gaps, firstLate []float64 }

// follow1 reads one job's stream to its final event, and notes when each
// token event came and when the model produced each of its words (the
// simulated model's stamps, CHATFLEET_SIM_STAMPS).
func follow1(sc *bufio.Scanner) []arrival {
	var out []arrival
	typ := ""
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "event: "); ok {
			typ = v
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		switch typ {
		case "token":
			ev := arrival{at: time.Now()}
			_, delta, _ := strings.Cut(data, `"delta":"`)
			for _, w := range strings.Fields(strings.TrimSuffix(delta, `"}`)) {
				if us, err := strconv.ParseInt(w, 10, 64); err == nil {
					ev.made = append(ev.made, time.UnixMicro(us))
				}
			}
			out = append(out, ev)
		case "done", "error", "canceled":
			return out
		}
	}
	return out
}

// arrival is one token event at its follower: when it came, and when the
// model produced each of its words.
type arrival struct {
	at   time.Time
	made []time.Time
}

// lateness measures a followed reply: how long after the model produced
// each word its follower read it (all on one machine's clock), for every
// word and for each event's first (the one that waited longest), and the
// gaps between token events.
func lateness(evs []arrival) followed {
	var out followed
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for i, ev := range evs {
		if i > 0 {
			out.gaps = append(out.gaps, ms(ev.at.Sub(evs[i-1].at)))
		}
		for k, made := range ev.made {
			if k == 0 {
				out.late = append(out.late, ms(ev.at.Sub(made)))
				if i == 0 {
					out.firstLate = append(out.firstLate, ms(ev.at.Sub(made)))
				}
			}
			out.wordLate = append(out.wordLate, ms(ev.at.Sub(made)))
		}
	}
	return out
}

// pacedReplies compares paced replies with burst replies of the same
// length, and measures how full the worker's slots get.
func (e env) pacedReplies() []result {
	const n = pacedConc // one wave for the Redis figures
	burst, idle, followed := pacedFigures{}, pacedFigures{}, pacedFigures{}
	var cpu struct{ burst, idle, followed []float64 }
	for range pacedReps() {
		burst = e.pacedRun(n, pacedConc, 0, false, nil)
		idle = e.pacedRun(n, pacedConc, pacedDelay, false, nil)
		followed = e.pacedRun(n, pacedConc, pacedDelay, true, nil)
		cpu.burst = append(cpu.burst, burst.cpuPerJob)
		cpu.idle = append(cpu.idle, idle.cpuPerJob)
		cpu.followed = append(cpu.followed, followed.cpuPerJob)
	}
	slices.Sort(followed.late)
	lateP := func(p float64) float64 { return pct(followed.late, p) }
	rows := []result{
		{name: "Redis CPU per job, 40-token reply paced 50 ms a token, no follower (2,000 jobs at concurrency 2,000)", unit: "µs",
			target: "≤ 1.3× the burst reply", ours: cpu.idle, base: cpu.burst, met: func(x float64) bool { return x <= 1.3 },
			note: fmt.Sprintf("baseline: the same 40 tokens all at once. Commands Redis ran per job (scripts' own included; last repetition): paced %.1f, burst %.1f", idle.cmdsPerJob, burst.cmdsPerJob)},
		{name: "Redis CPU per job, 40-token reply paced 50 ms a token, followed live over SSE", unit: "µs",
			target: "≤ 2.5× the burst reply", ours: cpu.followed, base: cpu.burst, met: func(x float64) bool { return x <= 2.5 },
			note: fmt.Sprintf("at the default CHATFLEET_STREAM_FLUSH_INTERVAL (%s; the log written every %s); last repetition: %.1f commands per job, and the first word of each batch reached its follower p50 %.0f ms, p99 %.0f ms, max %.0f ms after the worker got it (%d batches)",
				defaults().StreamFlushInterval, defaults().StreamUnfollowedFlushInterval, followed.cmdsPerJob, lateP(0.5), lateP(0.99), followed.late[len(followed.late)-1], len(followed.late))},
	}
	// 6,000 paced jobs (three waves of 2 s) at concurrency 2,000.
	var took, peak, mem []float64
	for range pacedReps() {
		f := e.pacedRun(3*pacedConc, pacedConc, pacedDelay, false, nil)
		took, peak, mem = append(took, f.took.Seconds()), append(peak, float64(f.peak)), append(mem, f.rssPerJob)
	}
	rows = append(rows,
		result{name: "6,000 paced 2 s jobs at concurrency 2,000, one worker", unit: "s", target: "≤ 1.5× the 6 s of work",
			ours: took, base: []float64{6}, met: func(x float64) bool { return x <= 1.5 },
			note: "baseline computed, not measured: three waves of 2,000 replies of 2 s; the time includes the worker's start-up"},
		result{name: "Jobs in flight at the peak, concurrency 2,000", unit: "jobs", target: "≥ 1,900", ours: peak,
			base: []float64{pacedConc}, higherIsBetter: true, met: func(x float64) bool { return x >= 0.95 },
			note: "baseline: the worker's concurrency (its slots, not a measurement)"},
		result{name: "Worker RSS per job in flight at the peak", unit: "KB", target: "reported", ours: mem})
	return append(rows, followRows(followed)...)
}

// followRows are the followed run's smoothness rows (its last repetition):
// how long after the worker got a word its follower read it, and the gaps
// between the follower's token events, against the model's own pace.
func followRows(f pacedFigures) []result {
	slices.Sort(f.wordLate)
	slices.Sort(f.gaps)
	one := func(xs []float64, p float64) []float64 { return []float64{pct(xs, p)} }
	pace := []float64{float64(pacedDelay.Milliseconds())}
	slices.Sort(f.firstLate)
	note := fmt.Sprintf("the followed run above (its last repetition), at the default CHATFLEET_STREAM_FLUSH_INTERVAL: %d words read by %d followers, each timed from the simulated model's stamp of when it produced the word (CHATFLEET_SIM_STAMPS; one clock); each reply's first word p50 %.0f ms, p99 %.0f ms; the model's own pace is one word every %s",
		len(f.wordLate), pacedConc, pct(f.firstLate, 0.5), pct(f.firstLate, 0.99), pacedDelay)
	return []result{
		{name: "Followed paced reply: from the worker getting a word to its follower reading it, p50", unit: "ms", target: "≤ 50 ms",
			ours: one(f.wordLate, 0.5), check: func(ours, _ float64) bool { return ours <= 50 }, note: note},
		{name: "Followed paced reply: the same, p99", unit: "ms", target: "≤ 150 ms",
			ours: one(f.wordLate, 0.99), check: func(ours, _ float64) bool { return ours <= 150 }, note: note},
		{name: "Followed paced reply: gap between token events at the follower, p50", unit: "ms", target: "≤ 80 ms",
			ours: one(f.gaps, 0.5), base: pace, check: func(ours, _ float64) bool { return ours <= 80 },
			note: "baseline: the model's pace, one word every 50 ms; " + note},
	}
}

// defaults is the fleet's configuration when nothing is set.
func defaults() config.Config {
	c, err := config.Load(config.RoleWorker, func(k string) string {
		if k == "CHATFLEET_REDIS_URL" {
			return "redis://127.0.0.1:6379" // required, and not read here
		}
		return ""
	})
	if err != nil {
		panic(err)
	}
	return c
}

// pct is the p-th quantile of sorted xs (0 when empty).
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return xs[min(len(xs)-1, int(p*float64(len(xs))))]
}

// pacedReps is reps, or BENCH_PACED_REPS for a quicker look.
func pacedReps() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_PACED_REPS")); err == nil && n > 0 {
		return n
	}
	return reps
}

// BenchmarkPaced runs only the paced rows (make bench runs them in the report).
func BenchmarkPaced(b *testing.B) {
	e := fleetEnv(b)
	if ws := os.Getenv("BENCH_PACED_WINDOWS"); ws != "" {
		// The followed window's trade: Redis CPU per job against lateness.
		burst := e.pacedRun(pacedConc, pacedConc, 0, false, nil)
		for _, w := range strings.Split(ws, ",") {
			f := e.pacedRun(pacedConc, pacedConc, pacedDelay, true, map[string]string{"CHATFLEET_STREAM_FLUSH_INTERVAL": w})
			slices.Sort(f.wordLate)
			slices.Sort(f.gaps)
			slices.Sort(f.firstLate)

			b.Logf("window %s: each reply's first word reached its follower p50 %.0f ms, p99 %.0f ms after the model produced it", w, pct(f.firstLate, 0.5), pct(f.firstLate, 0.99))
			b.Logf("window %s: Redis CPU per job %.0f µs (%.2fx the burst reply's %.0f), %.1f commands, a word's delay p50 %.0f ms p99 %.0f ms, gap between token events p50 %.0f ms, %d token events",
				w, f.cpuPerJob, f.cpuPerJob/burst.cpuPerJob, burst.cpuPerJob, f.cmdsPerJob, pct(f.wordLate, 0.5), pct(f.wordLate, 0.99), pct(f.gaps, 0.5), len(f.late))
		}
		return
	}
	if os.Getenv("BENCH_PACED_INFLIGHT") != "" {
		for range pacedReps() {
			f := e.pacedRun(3*pacedConc, pacedConc, pacedDelay, false, nil)
			b.Logf("6,000 paced jobs at concurrency 2,000: %.2f s, peak %d in flight, %.1f KB RSS per job in flight, Redis CPU %.0f µs per job", f.took.Seconds(), f.peak, f.rssPerJob, f.cpuPerJob)
		}
		return
	}
	for _, r := range e.pacedReplies() {
		b.Logf("%s: ours %v base %v %s", r.name, r.ours, r.base, r.note)
	}
}
