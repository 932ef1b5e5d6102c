package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"

	"github.com/chatfleet/chatfleet/client"
	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// browser is a headless Chromium on a private profile that records every
// request the page makes and every error it throws.
type browser struct {
	ctx      context.Context
	mu       sync.Mutex
	requests []string
	errors   []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: apt-get install -y chromium (make test and .ci/run install it)")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1100, 800),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{ctx: ctx}
	chromedp.ListenTarget(ctx, func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			b.requests = append(b.requests, e.Request.URL)
		case *runtime.EventExceptionThrown:
			b.errors = append(b.errors, e.ExceptionDetails.Error())
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.APITypeError {
				b.errors = append(b.errors, "console.error")
			}
		}
	})
	if err := chromedp.Run(ctx, network.Enable(), runtime.Enable()); err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *browser) run(t *testing.T, timeout time.Duration, actions ...chromedp.Action) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		t.Fatal(err)
	}
}

func (b *browser) streamRequests(jobID string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, u := range b.requests {
		if strings.Contains(u, "/api/v1/chat/jobs/"+jobID) && strings.Contains(u, "/stream") && !strings.Contains(u, "stream-token") {
			n++
		}
	}
	return n
}

// The console in a real Chromium: a chat round trip with live tokens; a
// reload mid-answer resumes exactly; the answer's EventSource
// is closed by the page after `done`; every request stays on the
// API's origin; no page errors.
func TestConsoleInABrowser(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_SIM_TOKENS": "40", "CHATFLEET_SIM_TOKEN_DELAY": "60ms"})
	base := apis[0].URL()
	c := client.New(base)
	b := newBrowser(t)
	b.run(t, 20*time.Second, chromedp.Navigate(base+"/"), chromedp.WaitVisible("#input", chromedp.ByID))

	var session string
	b.run(t, 5*time.Second, chromedp.Value("#session", &session, chromedp.ByID))
	reply := `#messages .msg.assistant:last-child`
	send := func(text string) {
		b.run(t, 5*time.Second, chromedp.SendKeys("#input", text, chromedp.ByID), chromedp.SendKeys("#input", "\r", chromedp.ByID))
	}
	// shown reads the last answer's text and state together (one evaluation,
	// so that the two belong to the same moment).
	shown := func() (string, string) {
		var got []string
		b.run(t, 5*time.Second, chromedp.Evaluate(`(() => { const m = document.querySelector('`+reply+`');
			return m ? [m.querySelector('.text').textContent, m.dataset.state || ''] : ['', '']; })()`, &got))
		return got[0], got[1]
	}
	jobOf := func() string {
		var id string
		b.run(t, 5*time.Second, chromedp.Evaluate(`document.querySelector('`+reply+`').dataset.job`, &id))
		return id
	}
	waitDone := func() string {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if text, st := shown(); st == "done" {
				return text
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("the answer never finished in the page")
		return ""
	}

	// 1. A round trip with live tokens: the text grows before the answer
	// ends, at the model's pace: the page records every text the answer
	// shows: a 40-token reply at 60 ms a token shows at least half its
	// tokens' worth (it showed 10 texts when followed jobs were batched for
	// 250 ms, and 43 with each token live).
	b.run(t, 5*time.Second, chromedp.Evaluate(`(() => { window.cfStates = [];
		new MutationObserver(() => { const m = document.querySelector('`+reply+`'); if (!m) return;
			const t = m.querySelector('.text').textContent; if (t && window.cfStates[window.cfStates.length - 1] !== t) window.cfStates.push(t); })
		.observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true}); })()`, nil))
	send("hello browser")
	var partial []int
	for len(partial) < 3 {
		text, st := shown()
		if st == "done" {
			break
		}
		if n := len(text); n > 0 && (len(partial) == 0 || n > partial[len(partial)-1]) {
			partial = append(partial, n)
		}
		time.Sleep(30 * time.Millisecond)
	}
	if len(partial) < 3 {
		t.Fatalf("no live tokens: the text grew %v before done", partial)
	}
	first := jobOf()
	text := waitDone()
	j, err := c.Get(context.Background(), first)
	if err != nil || j.SessionID != session || text != j.Result.Content {
		t.Fatalf("page shows %q, the job %+v (%v)", text, j, err)
	}
	var states []string
	b.run(t, 5*time.Second, chromedp.Evaluate(`window.cfStates`, &states))
	if len(states) < 20 || states[len(states)-1] != text {
		t.Fatalf("the answer showed %d texts on its way to %q, want at least 20: %q", len(states), text, states)
	}
	t.Logf("the 40-token answer showed %d texts", len(states))

	// 2. The page closes the answer's EventSource at its final event: no
	// reconnect follows (a page that kept streams open would show more
	// requests now).
	var ready int
	b.run(t, 5*time.Second, chromedp.Evaluate(`window.cfStream ? window.cfStream.readyState : -1`, &ready))
	if ready != 2 {
		t.Fatalf("EventSource readyState %d after done, want 2 (closed)", ready)
	}
	time.Sleep(3 * time.Second)
	if n := b.streamRequests(first); n != 1 {
		t.Fatalf("%d stream requests for the finished job, want 1", n)
	}

	// 3. A reload mid-answer resumes exactly where it was.
	send("reload me")
	var second string
	for deadline := time.Now().Add(10 * time.Second); ; {
		var id string
		b.run(t, 5*time.Second, chromedp.Evaluate(`(() => { const m = document.querySelector('`+reply+`'); return m ? m.dataset.job : ''; })()`, &id))
		if text, st := shown(); id != first && st == "streaming" && len(text) > 40 {
			second = id
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second answer never streamed")
		}
		time.Sleep(30 * time.Millisecond)
	}
	b.run(t, 20*time.Second, chromedp.Reload(), chromedp.WaitVisible("#input", chromedp.ByID))
	text = waitDone()
	var streamed string
	b.run(t, 5*time.Second, chromedp.Evaluate(`document.querySelector('`+reply+`').dataset.streamed`, &streamed))
	j, err = c.Get(context.Background(), second)
	if err != nil || text != j.Result.Content || streamed != j.Result.Content {
		t.Fatalf("after a reload the page streamed %q and shows %q; the job's result is %q (%v)", streamed, text, j.Result.Content, err)
	}
	b.mu.Lock()
	resumed := false
	for _, u := range b.requests {
		resumed = resumed || (strings.Contains(u, second+"/stream") && strings.Contains(u, "last_event_id="))
	}
	b.mu.Unlock()
	if !resumed {
		t.Error("the reloaded page did not resume with last_event_id")
	}

	// 4. A tool call in the session (the simulated model calls a tool its
	// message names) shows in the chat with its name and arguments.
	sub, err := c.Submit(context.Background(), client.SubmitRequest{SessionID: session, Message: "please lookup the docs",
		Tools: []client.Tool{{Type: "function", Function: client.Function{Name: "lookup", Parameters: map[string]any{"type": "object"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if j, err := c.Wait(context.Background(), sub.JobID); err != nil || len(j.Result.ToolCalls) != 1 {
		t.Fatalf("tool job %+v %v", j, err)
	}
	var call string
	b.run(t, 20*time.Second, chromedp.Reload(), chromedp.WaitVisible(reply+" .call", chromedp.ByQuery), chromedp.Text(reply+" .call", &call, chromedp.ByQuery))
	if want := `lookup({"message":"please lookup the docs"})`; !strings.Contains(call, want) {
		t.Errorf("the chat shows the tool call as %q, want %q", call, want)
	}

	// 5. The queue view shows the queue against its threshold, live, and
	// what waits per priority lane.
	var status, workers, lanes string
	b.run(t, 10*time.Second, chromedp.Click(`nav button[data-tab="queue"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#queues tr:nth-child(2)", chromedp.ByQuery),
		chromedp.Text("#queuestatus", &status, chromedp.ByID), chromedp.Text("#workers", &workers, chromedp.ByID),
		chromedp.Text("#schedlanes", &lanes, chromedp.ByID))
	if !strings.Contains(status, "backlog 0 (0 runnable) of threshold 500") || !strings.Contains(workers, "1 live") {
		t.Errorf("queue view: %q, workers %q", status, workers)
	}
	for _, p := range []string{"high", "normal", "low"} {
		if !strings.Contains(lanes, p) {
			t.Errorf("the queue view's lanes lack %s: %q", p, lanes)
		}
	}
	// The job view replays a job's events.
	b.run(t, 10*time.Second, chromedp.Click(`nav button[data-tab="jobs"]`, chromedp.ByQuery),
		chromedp.SendKeys("#jobid", first, chromedp.ByID), chromedp.Click("#jobform button", chromedp.ByQuery),
		chromedp.WaitVisible(`#jobevents li:last-child`, chromedp.ByQuery))
	var lastEvent string
	for deadline := time.Now().Add(5 * time.Second); !strings.HasPrefix(lastEvent, "done ") && time.Now().Before(deadline); {
		b.run(t, 5*time.Second, chromedp.Text(`#jobevents li:last-child`, &lastEvent, chromedp.ByQuery))
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.HasPrefix(lastEvent, "done ") {
		t.Errorf("job view: last event %q", lastEvent)
	}
	// … and a tool call's fragments among them.
	b.run(t, 10*time.Second, chromedp.SetValue("#jobid", sub.JobID, chromedp.ByID), chromedp.Click("#jobform button", chromedp.ByQuery),
		chromedp.WaitVisible(`#jobevents li:last-child`, chromedp.ByQuery))
	var events string
	// Until the list is the tool job's (the text job's may still show) and complete.
	for deadline := time.Now().Add(5 * time.Second); !(strings.Contains(events, "tool_call ") && strings.Contains(events, "done ")) && time.Now().Before(deadline); {
		b.run(t, 5*time.Second, chromedp.Text(`#jobevents`, &events, chromedp.ByQuery))
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(events, `tool_call {"seq":1,"index":0,"id":"call_`) || !strings.Contains(events, `"name":"lookup"`) {
		t.Errorf("job view events: %q", events)
	}
	b.run(t, 5*time.Second, chromedp.Click(`nav button[data-tab="chat"]`, chromedp.ByQuery))

	// 6. Nothing left the API's origin; no page errors.
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, u := range b.requests {
		if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("a request left the API's origin: %s", u)
		}
	}
	if len(b.errors) > 0 {
		t.Errorf("page errors: %v", b.errors)
	}

	if out := os.Getenv("CHATFLEET_CONSOLE_SCREENSHOT"); out != "" {
		var png []byte
		b.mu.Unlock()
		b.run(t, 10*time.Second, chromedp.FullScreenshot(&png, 100))
		b.mu.Lock()
		if err := os.WriteFile(filepath.Clean(out), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// With API keys on, the console asks for a key, and follows its answers over
// EventSource with a stream token (EventSource cannot send the header).
func TestConsoleWithAPIKeys(t *testing.T) {
	rd := testkit.StartRedis(t)
	const key = "acme-key-0123456789"
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": "acme:" + key, "CHATFLEET_SIM_TOKENS": "5"})
	base := apis[0].URL()
	b := newBrowser(t)
	var state string
	b.run(t, 20*time.Second, chromedp.Navigate(base+"/console/"),
		chromedp.WaitVisible("#apikey", chromedp.ByID),
		chromedp.SendKeys("#apikey", key, chromedp.ByID), chromedp.Click("#keyform button", chromedp.ByQuery),
		chromedp.WaitNotVisible("#keyform", chromedp.ByID),
		chromedp.SendKeys("#input", "with a key\r", chromedp.ByID),
		chromedp.WaitVisible(`#messages .msg.assistant[data-state="done"]`, chromedp.ByQuery),
		chromedp.AttributeValue(`#messages .msg.assistant`, "data-state", &state, nil))
	if b.streamRequests("") == 0 {
		t.Fatal("no stream request")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	tokened := false
	for _, u := range b.requests {
		tokened = tokened || (strings.Contains(u, "/stream?token=") && !strings.Contains(u, key))
		if strings.Contains(u, key) {
			t.Errorf("the API key appears in a URL: %s", u)
		}
	}
	if !tokened || state != "done" {
		t.Fatalf("followed with a stream token: %v, state %q", tokened, state)
	}
	if len(b.errors) > 0 {
		t.Errorf("page errors: %v", b.errors)
	}
}

// The console's job list, job view, usage view and their URLs, in Chromium:
// the list shows the tenant's jobs, a job opens at its own URL, the usage
// view charts today's tokens, and the back button returns to the list.
func TestConsoleJobListUsageAndDeepLinks(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_SIM_TOKENS": "5", "CHATFLEET_MODEL_PRICES": "sim:input=1,output=2"})
	base := apis[0].URL()
	c := client.New(base)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ids []string
	for i := range 3 {
		sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "deep", Message: fmt.Sprintf("turn %d", i)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Wait(ctx, sub.JobID); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sub.JobID)
	}
	b := newBrowser(t)
	var rows int
	var first, view, hash string
	b.run(t, 20*time.Second, chromedp.Navigate(base+"/console/#/jobs"),
		chromedp.WaitVisible(`#joblist a`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll('#joblist tr').length`, &rows),
		chromedp.Text(`#joblist a`, &first, chromedp.ByQuery))
	if rows != 4 || first != ids[2] {
		t.Fatalf("job list: %d rows, first %q; want 3 jobs, newest %s first", rows-1, first, ids[2])
	}
	b.run(t, 10*time.Second, chromedp.Click(`#joblist a`, chromedp.ByQuery),
		chromedp.WaitVisible(`#jobview`, chromedp.ByID),
		chromedp.Poll(`document.querySelector('#jobview').textContent.includes('"status": "succeeded"')`, nil),
		chromedp.Text(`#jobview`, &view, chromedp.ByID),
		chromedp.Evaluate(`location.hash`, &hash))
	if hash != "#/jobs/"+ids[2] || !strings.Contains(view, ids[2]) {
		t.Fatalf("job view at %q: %s", hash, view)
	}
	var status, costTitle string
	var bars, costBars int
	b.run(t, 10*time.Second, chromedp.Navigate(base+"/console/#/usage"),
		chromedp.WaitVisible(`#usagetable td`, chromedp.ByQuery),
		chromedp.Text(`#usagestatus`, &status, chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll('#usagechart rect').length`, &bars),
		chromedp.Evaluate(`document.querySelectorAll('#usagecost rect').length`, &costBars),
		chromedp.Evaluate(`document.querySelector('#usagecost rect title').textContent`, &costTitle))
	if !strings.Contains(status, "3 requests") || bars != 1 || costBars != 1 || !strings.Contains(costTitle, " sim: $0.") {
		t.Fatalf("usage view: %q, %d token bars, %d cost bars (%q)", status, bars, costBars, costTitle)
	}
	b.run(t, 10*time.Second, chromedp.NavigateBack(), chromedp.Poll(`location.hash.startsWith('#/jobs/')`, nil),
		chromedp.WaitVisible(`#jobs`, chromedp.ByID))
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errors) > 0 {
		t.Errorf("page errors: %v", b.errors)
	}
}

// The queue view charts the fleet's own figures of the last 15 minutes: a
// backlog recorded while no worker ran, then the throughput and time to
// first token once one did.
func TestQueueViewChartsTheLast15Minutes(t *testing.T) {
	rd := testkit.StartRedis(t)
	env := map[string]string{"CHATFLEET_SIM_TOKENS": "5"}
	apis, _ := fleet(t, rd, 1, 0, env)
	base := apis[0].URL()
	const jobs = 12
	var ids []string
	for i := range jobs {
		ids = append(ids, submit(t, base, fmt.Sprintf("chart-%d", i), "hi", nil).Body["job_id"].(string))
	}
	submitted := time.Now()
	type point struct {
		Backlog       *int     `json:"backlog"`
		JobsPerSecond *float64 `json:"jobs_per_second"`
		TTFT          *float64 `json:"time_to_first_token_seconds"`
	}
	// history polls the history until ok accepts its points.
	history := func(what string, ok func([]point) bool) []point {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := do(t, http.MethodGet, base+"/health/queue/history", nil, nil)
			var h struct {
				Slot      int     `json:"slot_seconds"`
				Threshold int     `json:"threshold"`
				Points    []point `json:"points"`
			}
			if err := json.Unmarshal([]byte(r.Raw), &h); err != nil || r.Status != http.StatusOK || h.Slot != 10 || len(h.Points) != 90 || h.Threshold != 500 {
				t.Fatalf("history: %d %s", r.Status, r.Raw)
			}
			if ok(h.Points) {
				return h.Points
			}
			if time.Now().After(deadline) {
				t.Fatalf("history never showed %s: %s", what, r.Raw)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	history("the backlog of 12", func(ps []point) bool {
		return slices.ContainsFunc(ps, func(p point) bool { return p.Backlog != nil && *p.Backlog == jobs })
	})
	waited := time.Since(submitted).Seconds() // every job waited at least this long for its first token
	testkit.StartProc(t, "worker-0", workerBin, fleetEnv(rd.URL(), env))
	for _, id := range ids {
		waitJob(t, base, id)
	}
	ps := history("the jobs' throughput and first tokens", func(ps []point) bool {
		return slices.ContainsFunc(ps, func(p point) bool { return p.TTFT != nil }) &&
			slices.ContainsFunc(ps, func(p point) bool { return p.JobsPerSecond != nil && *p.JobsPerSecond > 0 })
	})
	for _, p := range ps {
		if p.TTFT != nil && (*p.TTFT < waited || *p.TTFT > 60) {
			t.Fatalf("mean time to first token %.3f s, but every job waited %.3f s to start", *p.TTFT, waited)
		}
		if p.TTFT != nil || p.JobsPerSecond != nil && *p.JobsPerSecond > 0 {
			t.Logf("slot: backlog %v, %v jobs/s, first token after %v s (each job waited at least %.2f s)", deref(p.Backlog), deref(p.JobsPerSecond), deref(p.TTFT), waited)
		}
	}
	b := newBrowser(t)
	var backlog, rate, ttft, dashed int
	var latest string
	b.run(t, 20*time.Second, chromedp.Navigate(base+"/console/#/queue"),
		chromedp.WaitVisible(`#ttftchart path`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelectorAll('#backlogchart path').length`, &backlog),
		chromedp.Evaluate(`document.querySelectorAll('#ratechart path').length`, &rate),
		chromedp.Evaluate(`document.querySelectorAll('#ttftchart path').length`, &ttft),
		chromedp.Evaluate(`document.querySelectorAll('#backlogchart line[stroke-dasharray]').length`, &dashed),
		chromedp.Evaluate(`document.querySelector('#backlogchart .latest').textContent`, &latest))
	if backlog != 1 || rate != 1 || ttft != 1 || dashed != 1 || !strings.HasPrefix(latest, "latest ") {
		t.Fatalf("queue charts: backlog %d, rate %d, ttft %d lines, threshold %d, %q", backlog, rate, ttft, dashed, latest)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errors) > 0 {
		t.Errorf("page errors: %v", b.errors)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// With a models file, in Chromium: the chat view offers /v1/models and sends
// the one picked as the job's model; the queue view lists each deployment
// from /health/detailed with its model, breaker, calls in flight against its
// limit and effective rate, as the fleet's shared state in Redis has them;
// the usage view totals by public model.
func TestConsoleModelsDeploymentsAndUsageByModel(t *testing.T) {
	rd := testkit.StartRedis(t)
	path := filepath.Join(t.TempDir(), "models.yaml")
	file := `default_model: alpha
models:
  - name: alpha
    deployments:
      - {id: alpha-east, provider: sim, rpm: 600}
      - {id: alpha-west, provider: sim, rpm: 300}
    price: {input: 1, output: 2}
  - name: beta
    deployments:
      - {id: beta-1, provider: sim, concurrency: 2}
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_MODELS_FILE": path, "CHATFLEET_SIM_TOKENS": "5"})
	base := apis[0].URL()
	c := client.New(base)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sub, err := c.Submit(ctx, client.SubmitRequest{SessionID: "by-model", Message: "for alpha", Model: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx, sub.JobID); err != nil {
		t.Fatal(err)
	}

	// Chat: the select offers the file's models; beta is sent as the model.
	b := newBrowser(t)
	var options []string
	b.run(t, 20*time.Second, chromedp.Navigate(base+"/console/"),
		chromedp.WaitVisible("#input", chromedp.ByID),
		chromedp.Poll(`document.querySelectorAll('#model option').length === 3`, nil),
		chromedp.Evaluate(`[...document.querySelectorAll('#model option')].map((o) => o.value + '=' + o.textContent)`, &options))
	if !slices.Equal(options, []string{"=default", "alpha=alpha", "beta=beta"}) {
		t.Fatalf("model options %q, want default, alpha, beta", options)
	}
	var jobID string
	b.run(t, 20*time.Second, chromedp.SetValue("#model", "beta", chromedp.ByID),
		chromedp.SendKeys("#input", "for beta\r", chromedp.ByID),
		chromedp.WaitVisible(`#messages .msg.assistant[data-state="done"]`, chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelector('#messages .msg.assistant').dataset.job`, &jobID))
	j, err := c.Get(ctx, jobID)
	if err != nil || j.Result == nil || j.Result.Model != "beta" || j.Result.Provider != "beta-1" {
		t.Fatalf("the job sent with beta picked: %+v %v", j, err)
	}

	// Queue: alpha-west's breaker is open and beta-1 holds a call (as a
	// worker's lease in Redis says) of its 2.
	rdb := rd.Client()
	raw, _ := json.Marshal(gobreaker.SharedState{State: gobreaker.StateOpen, Expiry: time.Now().Add(time.Minute)})
	if err := rdb.Set(ctx, rkeys.Breaker("gobreaker:state:alpha-west"), raw, 0).Err(); err != nil {
		t.Fatal(err)
	}
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.ZAdd(ctx, rkeys.ProviderLeases("beta-1"), redis.Z{Score: float64(now.Add(time.Minute).UnixMilli()), Member: "held"}).Err(); err != nil {
		t.Fatal(err)
	}
	var rows [][]string
	var openRow string
	b.run(t, 20*time.Second, chromedp.Click(`nav button[data-tab="queue"]`, chromedp.ByQuery),
		chromedp.Poll(`document.querySelectorAll('#deployments tr').length === 4 &&
			document.querySelector('#deployments').textContent.includes('1 of 2') &&
			document.querySelector('#deployments').textContent.includes('open')`, nil),
		chromedp.Evaluate(`[...document.querySelectorAll('#deployments tr')].map((tr) => [...tr.cells].map((c) => c.textContent))`, &rows),
		chromedp.Evaluate(`document.querySelector('#deployments tr[data-breaker="open"] td').textContent`, &openRow))
	want := [][]string{
		{"deployment", "model", "provider", "breaker", "in flight", "requests in window", "rate (rpm)", "at limit"},
		{"alpha-east", "alpha", "sim", "closed", "0", "", "570 of 600", ""},
		{"alpha-west", "alpha", "sim", "open", "0", "", "285 of 300", ""},
		{"beta-1", "beta", "sim", "closed", "1 of 2", "—", "—", ""},
	}
	for i, r := range rows {
		for k, cell := range r {
			// the windows' counts depend on when the jobs ran: checked by form
			if k == 5 && i > 0 && i < 3 {
				if !strings.HasSuffix(cell, " of 10 per 1.05 s") && !strings.HasSuffix(cell, " of 5 per 1.05 s") {
					t.Errorf("row %d window %q", i, cell)
				}
				continue
			}
			if i >= len(want) || k >= len(want[i]) || cell != want[i][k] {
				t.Errorf("deployments row %d cell %d: %q, want %v", i, k, cell, want[min(i, len(want)-1)])
			}
		}
	}
	if openRow != "alpha-west" {
		t.Errorf("the open breaker's row is %q", openRow)
	}

	// Usage: one row per public model, alpha priced by the file.
	var byModel [][]string
	b.run(t, 20*time.Second, chromedp.Navigate(base+"/console/#/usage"),
		chromedp.Poll(`document.querySelectorAll('#usagemodels tr').length === 3`, nil),
		chromedp.Evaluate(`[...document.querySelectorAll('#usagemodels tr')].map((tr) => [...tr.cells].map((c) => c.textContent))`, &byModel))
	if len(byModel) != 3 || byModel[1][0] != "alpha" || byModel[1][1] != "1" || !strings.HasPrefix(byModel[1][4], "$0.") ||
		byModel[2][0] != "beta" || byModel[2][1] != "1" || byModel[2][4] != "—" {
		t.Fatalf("usage by model: %q", byModel)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errors) > 0 {
		t.Errorf("page errors: %v", b.errors)
	}
}
