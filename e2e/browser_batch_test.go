package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// The console's Batches tab, in Chromium, with a tenant's key: the list is
// the tenant's batches, newest first, a page of 20 and More for the rest;
// a batch still running (no worker yet) is followed by the page until it
// completes, its bar full and its counts 5 / 0 / 5; its output file's lines
// show their custom_ids and request ids (their jobs are gone); a deep
// link (#batches/<id>) opens a cancelled batch, whose error lines (no
// response) link to their jobs too; a failed batch lists its input errors.
func TestConsoleBatches(t *testing.T) {
	rd := testkit.StartRedis(t)
	env := map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_TOKENS": "3"}
	apis, _ := fleet(t, rd, 1, 0, env) // the worker starts once the page shows the batch running
	base := apis[0].URL()
	oa := openai.NewClient(option.WithBaseURL(base+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	acme := map[string]string{"Authorization": "Bearer " + keyAcme}

	// 20 batches that fail in validation (line 2 names another endpoint),
	// and beta's, which acme's console must not show.
	lines := strings.Split(strings.TrimSpace(batchInput(2)), "\n")
	lines[1] = strings.Replace(lines[1], `"url":"/v1/chat/completions"`, `"url":"/v1/embeddings"`, 1)
	bad := strings.Join(lines, "\n") + "\n"
	badFile := uploadBatch(t, oa, bad)
	var failed []string
	for range 20 {
		f := newBatch(t, oa, badFile.ID)
		if f.Status != openai.BatchStatusFailed || len(f.Errors.Data) != 1 {
			t.Fatalf("a bad batch: %s %+v", f.Status, f.Errors.Data)
		}
		failed = append(failed, f.ID)
		time.Sleep(2 * time.Millisecond) // each its own millisecond: the list's order is the creation order
	}
	beta := openai.NewClient(option.WithBaseURL(base+"/v1"), option.WithAPIKey(keyBeta), option.WithMaxRetries(0))
	betaBatch := newBatch(t, beta, uploadBatch(t, beta, bad).ID)

	// A batch cancelled while its 3 lines are queued jobs: its error file
	// answers each line with an error and no response.
	cancelled := newBatch(t, oa, uploadBatch(t, oa, batchInput(3)).ID)
	lineSession := "batch-" + strings.TrimPrefix(cancelled.ID, "batch_") + "-"
	for deadline := time.Now().Add(20 * time.Second); ; {
		r := do(t, http.MethodGet, base+"/api/v1/chat/jobs", nil, acme)
		data, _ := r.Body["data"].([]any)
		n := 0
		for _, j := range data {
			if s, _ := j.(map[string]any)["session_id"].(string); strings.HasPrefix(s, lineSession) {
				n++
			}
		}
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the batch's lines never became jobs: %d %s", r.Status, r.Raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := oa.Batches.Cancel(context.Background(), cancelled.ID); err != nil {
		t.Fatal(err)
	}
	cb := awaitBatch(t, oa, cancelled.ID)
	errLines := readLines(t, oa, cb.ErrorFileID)
	if cb.Status != openai.BatchStatusCancelled || cb.RequestCounts.Failed != 3 || len(errLines) != 3 || errLines[0].Response != nil || errLines[0].Error == nil {
		t.Fatalf("the cancelled batch: %s %+v, error lines %+v", cb.Status, cb.RequestCounts, errLines)
	}

	// The batch the page follows: in progress, its 5 lines queued; a
	// custom_id in markup shows as its text.
	const n = 5
	marked := "<i>req-4</i><img src=x>"
	good := newBatch(t, oa, uploadBatch(t, oa, strings.Replace(batchInput(n), `"custom_id":"req-4"`, `"custom_id":"`+marked+`"`, 1)).ID)
	var want []string // acme's batches as the API lists them
	for _, b := range do(t, http.MethodGet, base+"/v1/batches?limit=100", nil, acme).Body["data"].([]any) {
		want = append(want, b.(map[string]any)["id"].(string))
	}
	if len(want) != 22 || want[0] != good.ID || want[1] != cancelled.ID || want[21] != failed[0] {
		t.Fatalf("the API lists %v", want)
	}

	b := newBrowser(t)
	// waitFor polls the page until cond holds; else fails with what the
	// Batches tab shows.
	waitFor := func(what, cond string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Run(ctx, chromedp.Poll(cond, nil, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
			var shown string
			_ = chromedp.Run(b.ctx, chromedp.Evaluate(`location.hash + '\n' + document.querySelector('#batches').innerText + '\n' + document.querySelector('#jobview').textContent`, &shown))
			t.Fatalf("%s: %v; the page shows:\n%s", what, err, shown)
		}
	}
	cells := func(sel string) [][]string {
		t.Helper()
		var rows [][]string
		b.run(t, 5*time.Second, chromedp.Evaluate(`[...document.querySelectorAll('`+sel+` tr')].map((tr) => [...tr.cells].map((c) => c.textContent))`, &rows))
		return rows
	}
	// bar reads the progress bar in sel: its value and max.
	bar := func(sel string) []float64 {
		t.Helper()
		var v []float64
		b.run(t, 5*time.Second, chromedp.Evaluate(`(() => { const p = document.querySelector('`+sel+` progress'); return p ? [p.value, p.max] : []; })()`, &v))
		return v
	}
	field := func(name string) string { return `#batchinfo tr[data-field="` + name + `"] td` }
	row := func(id string) string { return `#batchlist tr[data-id="` + id + `"]` }

	// 1. The tab asks for the key, then lists the first 20 batches, newest
	// first; the running one at 0 of 5.
	b.run(t, 20*time.Second, chromedp.Navigate(base+"/console/#/batches"),
		chromedp.WaitVisible("#apikey", chromedp.ByID),
		chromedp.SendKeys("#apikey", keyAcme, chromedp.ByID), chromedp.Click("#keyform button", chromedp.ByQuery),
		chromedp.WaitNotVisible("#keyform", chromedp.ByID))
	waitFor("the first page of batches", `document.querySelectorAll('#batchlist tr').length === 21`)
	rows := cells("#batchlist")
	if !slices.Equal(rows[0], []string{"batch", "status", "endpoint", "created", "progress", "completed / failed / total"}) {
		t.Errorf("the list's head: %q", rows[0])
	}
	for i, r := range rows[1:] {
		if len(r) != 6 || r[0] != want[i] {
			t.Fatalf("row %d is %q, want batch %s (the API's order)", i+1, r, want[i])
		}
	}
	if r := rows[1]; r[1] != "in_progress" || r[2] != "/v1/chat/completions" || r[3] == "" || r[5] != "0 / 0 / 5" {
		t.Errorf("the running batch's row: %q", r)
	}
	if r := rows[3]; r[1] != "failed" || r[5] != "0 / 0 / 0" {
		t.Errorf("a failed batch's row: %q", r)
	}
	if v := bar(row(good.ID)); !slices.Equal(v, []float64{0, n}) {
		t.Errorf("the running batch's bar: %v, want 0 of %d", v, n)
	}
	// More: the rest, once each, and no More after them; beta's is not there.
	b.run(t, 10*time.Second, chromedp.Click("#batchmore", chromedp.ByID))
	waitFor("the second page", `document.querySelectorAll('#batchlist tr').length === 23 && document.querySelector('#batchmore').hidden`)
	var ids []string
	for _, r := range cells("#batchlist")[1:] {
		ids = append(ids, r[0])
	}
	if !slices.Equal(ids, want) || slices.Contains(ids, betaBatch.ID) {
		t.Fatalf("the list after More: %v, want %v", ids, want)
	}

	// 2. The running batch opens at its URL; the page follows it, without a
	// reload, once a worker runs its lines.
	b.run(t, 10*time.Second, chromedp.Click(row(good.ID)+" a", chromedp.ByQuery))
	waitFor("the running batch's details", `location.hash === '#/batches/`+good.ID+`' && !document.querySelector('#batchview').hidden &&
		document.querySelector('`+field("status")+`')?.textContent === 'in_progress'`)
	b.run(t, 5*time.Second, chromedp.Evaluate(`window.cfNoReload = true`, nil))
	testkit.StartProc(t, "worker-0", workerBin, fleetEnv(rd.URL(), env))
	waitFor("the batch completed in its row and its details", `document.querySelector('`+row(good.ID)+`').dataset.status === 'completed' &&
		document.querySelector('`+field("status")+`').textContent === 'completed' && document.querySelector('`+field("files")+` a[data-kind="output"]') !== null`)
	gb := awaitBatch(t, oa, good.ID)
	var kept bool
	b.run(t, 5*time.Second, chromedp.Evaluate(`window.cfNoReload === true`, &kept))
	if !kept || gb.Status != openai.BatchStatusCompleted || gb.OutputFileID == "" {
		t.Fatalf("the page reloaded (%v), or the batch %s %+v", !kept, gb.Status, gb.RequestCounts)
	}
	for _, r := range cells("#batchlist")[1:] {
		if r[0] == good.ID && (r[1] != "completed" || r[5] != "5 / 0 / 5") {
			t.Errorf("the completed batch's row: %q", r)
		}
	}
	if v := bar(row(good.ID)); !slices.Equal(v, []float64{n, n}) {
		t.Errorf("the completed batch's bar in the list: %v, want full (%d of %d)", v, n, n)
	}
	if v := bar(field("progress")); !slices.Equal(v, []float64{n, n}) {
		t.Errorf("the completed batch's bar in its details: %v", v)
	}
	var files, progress string
	b.run(t, 5*time.Second, chromedp.Text(field("files"), &files, chromedp.ByQuery), chromedp.Text(field("progress"), &progress, chromedp.ByQuery))
	if files != "input "+gb.InputFileID+" · output "+gb.OutputFileID || !strings.HasPrefix(strings.TrimSpace(progress), "5 / 0 / 5") {
		t.Errorf("the completed batch's files %q, progress %q", files, progress)
	}

	// 3. Its output file: a line each, with its custom_id, status and job.
	b.run(t, 10*time.Second, chromedp.Click(field("files")+` a[data-kind="output"]`, chromedp.ByQuery))
	waitFor("the output file's lines", `location.hash === '#/batches/`+good.ID+`/`+gb.OutputFileID+`' && document.querySelectorAll('#filelines tr').length === 6`)
	var note string
	b.run(t, 5*time.Second, chromedp.Text("#filenote", &note, chromedp.ByID))
	if note != "5 lines" {
		t.Errorf("the file's note: %q", note)
	}
	out := readLines(t, oa, gb.OutputFileID)
	got := cells("#filelines")
	if !slices.Equal(got[0], []string{"line", "custom_id", "status", "job"}) {
		t.Errorf("the file's head: %q", got[0])
	}
	for i, l := range out {
		if w := []string{fmt.Sprint(i + 1), l.CustomID, "200", l.Response.RequestID}; !slices.Equal(got[i+1], w) {
			t.Errorf("output line %d shows %q, want %q", i+1, got[i+1], w)
		}
	}
	var markup int
	b.run(t, 5*time.Second, chromedp.Evaluate(`document.querySelectorAll('#batches i, #batches img').length`, &markup))
	if len(out) != n || out[2].CustomID != "req-2" || out[4].CustomID != marked || markup != 0 {
		t.Fatalf("the output file: %+v; %d elements made of its text", out, markup)
	}
	// An answered line's job is gone once its answer is in the batch: its
	// id shows, not linked.
	var links int
	b.run(t, 5*time.Second, chromedp.Evaluate(`document.querySelectorAll('#filelines a').length`, &links))
	if links != 0 {
		t.Errorf("the output file links %d lines to jobs that are gone", links)
	}

	// 4. A deep link, in a page loaded anew (the key is the tab's): the
	// cancelled batch, its error file, and an error line's job (no
	// response: its id names the job).
	b.run(t, 20*time.Second, chromedp.Navigate("about:blank"), chromedp.Navigate(base+"/console/#batches/"+cancelled.ID))
	waitFor("the deep link's batch", `!document.querySelector('#batches').hidden && document.querySelector('nav button.active').dataset.tab === 'batches' &&
		document.querySelector('#batchtitle').textContent === '`+cancelled.ID+`' && document.querySelector('`+field("status")+`')?.textContent === 'cancelled' &&
		document.querySelector('`+row(cancelled.ID)+`.selected') !== null`)
	b.run(t, 5*time.Second, chromedp.Text(field("files"), &files, chromedp.ByQuery), chromedp.Text(field("progress"), &progress, chromedp.ByQuery))
	if files != "input "+cb.InputFileID+" · error "+cb.ErrorFileID || !strings.HasPrefix(strings.TrimSpace(progress), "0 / 3 / 3") {
		t.Errorf("the cancelled batch's files %q, progress %q", files, progress)
	}
	if v := bar(field("progress")); !slices.Equal(v, []float64{3, 3}) {
		t.Errorf("the cancelled batch's bar: %v", v)
	}
	b.run(t, 10*time.Second, chromedp.Click(field("files")+` a[data-kind="error"]`, chromedp.ByQuery))
	waitFor("the error file's lines", `document.querySelectorAll('#filelines tr').length === 4`)
	got = cells("#filelines")
	for i, l := range errLines {
		lineJob := "job_" + strings.TrimPrefix(l.ID, "batch_req_")
		if w := []string{fmt.Sprint(i + 1), l.CustomID, l.Error.Code, lineJob}; !slices.Equal(got[i+1], w) {
			t.Errorf("error line %d shows %q, want %q", i+1, got[i+1], w)
		}
	}
	lineJob := "job_" + strings.TrimPrefix(errLines[0].ID, "batch_req_")
	b.run(t, 10*time.Second, chromedp.Click(`#filelines a[href="#/jobs/`+lineJob+`"]`, chromedp.ByQuery))
	waitFor("the error line's job", `location.hash === '#/jobs/`+lineJob+`' && document.querySelector('#jobview').textContent.includes('"`+lineJob+`"') &&
		document.querySelector('#jobview').textContent.includes('"status": "canceled"')`)

	// 5. A failed batch lists its input's errors: line, code, message.
	b.run(t, 10*time.Second, chromedp.Navigate(base+"/console/#batches/"+failed[5]))
	waitFor("the failed batch", `document.querySelector('#batchtitle').textContent === '`+failed[5]+`' &&
		document.querySelector('`+field("status")+`')?.textContent === 'failed' && !document.querySelector('#batcherrorshead').hidden`)
	fb, err := oa.Batches.Get(context.Background(), failed[5])
	if err != nil {
		t.Fatal(err)
	}
	got = cells("#batcherrors")
	e := fb.Errors.Data[0]
	if len(got) != 2 || !slices.Equal(got[1], []string{"2", e.Code, e.Message}) || e.Code != "mismatched_endpoint" {
		t.Errorf("the failed batch's errors: %q, want line 2 %s %q", got, e.Code, e.Message)
	}

	// Nothing left the API's origin, the key is in no URL; no page errors.
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, u := range b.requests {
		if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") && u != "about:blank" {
			t.Errorf("a request left the API's origin: %s", u)
		}
		if strings.Contains(u, keyAcme) {
			t.Errorf("the API key appears in a URL: %s", u)
		}
	}
	if len(b.errors) > 0 {
		t.Errorf("page errors: %v", b.errors)
	}
}
