package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// A Batch API batch of 10,000 Chat Completions lines against one deployment
// whose rpm quota is the limit: how close the batch comes to the time the
// quota allows, how often it oversteps it, and what Redis holds meanwhile.

const (
	batchLines     = 10000
	batchPerSecond = 450 // rpm 27,000: 10,000 lines take about 22 s at the quota
	batchCallTime  = 40 * time.Millisecond
	batchAtOnce    = 200 // ample: only the rate binds
	batchKey       = "bench-batch-key-0123456789abcdef"
)

// batchFigures is one batch's measurements.
type batchFigures struct {
	elapsed         time.Duration // POST /v1/batches to the poll that saw it completed
	rejected, calls int
	maxInFlight     int
	baseline, peak  float64 // Redis used_memory before the upload, and its peak sampled every 100 ms
	redisPeak       float64 // Redis's own used_memory_peak at the end
	fileBytes       int
	apiCPU          float64 // CPU seconds of the API process over the batch
	redisCPU        float64
}

// batchCall sends an authenticated request to the API and decodes a JSON
// answer into out (when not nil); it returns the raw body.
func (e env) batchCall(method, url, contentType string, body io.Reader, out any) []byte {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		e.b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+batchKey)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := httpc.Do(req)
	if err != nil {
		e.b.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		e.b.Fatalf("%s %s: %d %v %.300s", method, url, res.StatusCode, err, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			e.b.Fatalf("%s %s: %v", method, url, err)
		}
	}
	return raw
}

// batchRun runs one batch of lines through an API and 3 workers, over an
// upstream that answers 429 beyond its quota, configured exactly as the
// deployment's rpm and concurrency.
func (e env) batchRun(lines int) batchFigures {
	rd := testkit.StartRedis(e.b)
	defer rd.Stop()
	f := llmfake.NewOpenAI(e.b)
	f.SetQuota(batchPerSecond, batchAtOnce)
	f.Always(llmfake.Step{FirstByteDelay: batchCallTime})
	models := fmt.Sprintf("models:\n  - name: alpha\n    deployments:\n      - {id: one, provider: openai, model: m, base_url: %q, api_key_env: UPSTREAM_KEY, rpm: %d, concurrency: %d}\n",
		f.URL(), batchPerSecond*60, batchAtOnce)
	path := filepath.Join(e.b.TempDir(), "models.yaml")
	if err := os.WriteFile(path, []byte(models), 0o600); err != nil {
		e.b.Fatal(err)
	}
	api, workers, stopFleet := e.quotaFleet(rd, map[string]string{"CHATFLEET_MODELS_FILE": path, "UPSTREAM_KEY": llmfake.Key, "CHATFLEET_API_KEYS": "bench:" + batchKey})
	defer stopFleet()
	var input bytes.Buffer
	for i := range lines {
		fmt.Fprintf(&input, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"alpha","messages":[{"role":"user","content":"question %d"}]}}`+"\n", i, i)
	}
	out := batchFigures{fileBytes: input.Len()}

	// Redis memory from before the upload until the batch has completed.
	c := rd.Client()
	out.baseline = usedMemory(c)
	out.peak = out.baseline
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				out.peak = max(out.peak, usedMemory(c))
			}
		}
	}()
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	_ = mw.WriteField("purpose", "batch")
	fw, _ := mw.CreateFormFile("file", "input.jsonl")
	_, _ = fw.Write(input.Bytes())
	_ = mw.Close()
	var file struct {
		ID string `json:"id"`
	}
	e.batchCall(http.MethodPost, api.URL()+"/v1/files", mw.FormDataContentType(), &form, &file)

	type batch struct {
		ID            string  `json:"id"`
		Status        string  `json:"status"`
		OutputFileID  *string `json:"output_file_id"`
		ErrorFileID   *string `json:"error_file_id"`
		RequestCounts struct {
			Total, Completed, Failed int
		} `json:"request_counts"`
	}
	var b batch
	apiCPU0, redisCPU0 := procCPU(api.Pid()), redisCPU(rd)
	start := time.Now()
	e.batchCall(http.MethodPost, api.URL()+"/v1/batches", "application/json",
		strings.NewReader(fmt.Sprintf(`{"input_file_id":%q,"endpoint":"/v1/chat/completions","completion_window":"24h"}`, file.ID)), &b)
	for b.Status != "completed" {
		switch b.Status {
		case "failed", "expired", "cancelled":
			e.b.Fatalf("the batch ended %s: %+v", b.Status, b.RequestCounts)
		}
		if time.Since(start) > 5*time.Minute {
			e.b.Fatalf("the batch did not complete in 5 minutes: %s %+v", b.Status, b.RequestCounts)
		}
		time.Sleep(50 * time.Millisecond)
		e.batchCall(http.MethodGet, api.URL()+"/v1/batches/"+b.ID, "", nil, &b)
	}
	out.elapsed = time.Since(start)
	out.apiCPU, out.redisCPU = procCPU(api.Pid())-apiCPU0, redisCPU(rd)-redisCPU0
	close(stop)
	<-sampled
	out.redisPeak = infoField(c, "memory", "used_memory_peak")

	// The figures count only if every line was answered, once, by the upstream.
	degraded := 0.0
	for _, w := range workers {
		degraded += metric(w.URL(), `chatfleet_jobs_total{outcome="degraded"}`)
	}
	if b.RequestCounts.Completed != lines || b.RequestCounts.Failed != 0 || b.ErrorFileID != nil || b.OutputFileID == nil || degraded != 0 {
		e.b.Fatalf("the batch completed with %+v, error file %v, %v degraded replies", b.RequestCounts, b.ErrorFileID, degraded)
	}
	raw := e.batchCall(http.MethodGet, api.URL()+"/v1/files/"+*b.OutputFileID+"/content", "", nil, nil)
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			CustomID string `json:"custom_id"`
			Response struct {
				StatusCode int `json:"status_code"`
				Body       struct {
					Choices []struct {
						Message struct{ Content string }
					}
				}
			}
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			e.b.Fatalf("output line %.200q: %v", sc.Text(), err)
		}
		n, ok := strings.CutPrefix(l.CustomID, "req-")
		if i, err := strconv.Atoi(n); !ok || err != nil || i < 0 || i >= lines || seen[l.CustomID] || l.Response.StatusCode != 200 ||
			len(l.Response.Body.Choices) != 1 || l.Response.Body.Choices[0].Message.Content != llmfake.Reply("question "+n) {
			e.b.Fatalf("output line not an answer to its own line, or a repeat: %.300s", sc.Text())
		}
		seen[l.CustomID] = true
	}
	if len(seen) != lines {
		e.b.Fatalf("the output file holds %d distinct lines, not %d", len(seen), lines)
	}
	served, rejected, maxInFlight := f.QuotaStats()
	out.rejected, out.calls, out.maxInFlight = rejected, served+rejected, maxInFlight
	return out
}

// procCPU is a process's CPU time (user + system) in seconds.
func procCPU(pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(raw), ") ") // the command name may hold spaces
	fields := strings.Fields(rest)
	if len(fields) < 13 {
		return 0
	}
	user, _ := strconv.ParseFloat(fields[11], 64)
	sys, _ := strconv.ParseFloat(fields[12], 64)
	return (user + sys) / 100 // USER_HZ
}

// batchRows runs the batch times over and makes its rows: the time from
// create to completed against the quota's time (lines ÷ the rate a second),
// the share of upstream calls answered 429, and Redis's peak memory against
// its memory before the upload.
func (e env) batchRows(lines, times int) []result {
	floor := float64(lines) / batchPerSecond
	took := result{name: fmt.Sprintf("Batch API: %d-line batch, create → completed, one deployment at rpm %d", lines, batchPerSecond*60), unit: "s",
		target: "≤ 1.2× the quota's time", met: func(x float64) bool { return x <= 1.2 }}
	limited := result{name: "The same batch: upstream calls answered 429", unit: "%", target: "≤ 5 %", check: func(ours, _ float64) bool { return ours <= 5 }}
	mem := result{name: "The same batch: Redis used_memory at its peak", unit: "MiB", target: "(reported)"}
	var notes, calls, peaks []string
	var fileBytes int
	for range times {
		f := e.batchRun(lines)
		fileBytes = f.fileBytes
		took.ours, took.base = append(took.ours, f.elapsed.Seconds()), append(took.base, floor)
		limited.ours = append(limited.ours, 100*float64(f.rejected)/float64(max(f.calls, 1)))
		mem.ours, mem.base = append(mem.ours, f.peak/(1<<20)), append(mem.base, f.baseline/(1<<20))
		notes = append(notes, fmt.Sprintf("%.2f s, %.2f× the quota's time, at most %d calls in flight upstream, CPU over the batch: API %.1f s, Redis %.1f s",
			f.elapsed.Seconds(), f.elapsed.Seconds()/floor, f.maxInFlight, f.apiCPU, f.redisCPU))
		calls = append(calls, fmt.Sprintf("%d of %d", f.rejected, f.calls))
		peaks = append(peaks, fmt.Sprintf("%.1f", f.redisPeak/(1<<20)))
	}
	took.note = fmt.Sprintf("the quota's time is %.1f s (%d lines at %d calls a second, rpm %d in the models file as in the fake; %v calls; 1 API, 3 workers); ",
		floor, lines, batchPerSecond, batchPerSecond*60, batchCallTime) + strings.Join(notes, "; ") +
		". The fleet sends CHATFLEET_LLM_RATE_MARGIN (default 0.05) under a configured rate: that much of the gap is by design" +
		". Every line is checked in the output file: one answer each, to its own line, from the upstream"
	limited.note = "calls answered 429 of all calls, by repetition: " + strings.Join(calls, ", ")
	mem.note = fmt.Sprintf("sampled every 100 ms from before the upload to the poll that saw the batch completed; baseline: used_memory before the upload; "+
		"the input file is %.2f MiB; over the baseline, %.1f KB a line; Redis's own used_memory_peak (between samples too): %s MiB",
		float64(fileBytes)/(1<<20), (median(mem.ours)-median(mem.base))*(1<<20)/float64(lines)/1000, strings.Join(peaks, ", "))
	return []result{took, limited, mem}
}

// BenchmarkBatch runs only the batch rows, once (make bench runs them in the
// report); BENCH_BATCH_LINES sets a smaller batch.
func BenchmarkBatch(b *testing.B) {
	lines := batchLines
	if n, err := strconv.Atoi(os.Getenv("BENCH_BATCH_LINES")); err == nil && n > 0 {
		lines = n
	}
	e := fleetEnv(b)
	for _, r := range e.batchRows(lines, 1) {
		base := "no baseline"
		if len(r.base) > 0 {
			base = fmt.Sprintf("baseline %.4g %s, %.2f×", median(r.base), r.unit, median(r.ours)/median(r.base))
		}
		b.Logf("%s: %.4g %s, %s; target %s; %s", r.name, median(r.ours), r.unit, base, r.target, r.note)
	}
}
