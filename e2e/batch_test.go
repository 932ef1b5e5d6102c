package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// batchInput is a JSONL of n Chat Completions requests, custom_id req-<i>.
func batchInput(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"sim","messages":[{"role":"user","content":"question %d"}]}}`+"\n", i, i)
	}
	return b.String()
}

// outputLine is a line of a batch's output or error file.
type outputLine struct {
	ID       string `json:"id"`
	CustomID string `json:"custom_id"`
	Response *struct {
		StatusCode int                   `json:"status_code"`
		RequestID  string                `json:"request_id"`
		Body       openai.ChatCompletion `json:"body"`
	} `json:"response"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// readLines downloads a batch's output or error file ("" : none).
func readLines(t *testing.T, oa openai.Client, id string) []outputLine {
	t.Helper()
	if id == "" {
		return nil
	}
	res, err := oa.Files.Content(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out []outputLine
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l outputLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("output line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// answeredOnce fails t if a custom_id has two lines; it returns the
// custom_ids answered.
func answeredOnce(t *testing.T, lines []outputLine) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	for _, l := range lines {
		if seen[l.CustomID] {
			t.Fatalf("%s answered twice", l.CustomID)
		}
		seen[l.CustomID] = true
	}
	return seen
}

// awaitBatch polls a batch until it has ended.
func awaitBatch(t *testing.T, oa openai.Client, id string) *openai.Batch {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		b, err := oa.Batches.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		switch b.Status {
		case openai.BatchStatusCompleted, openai.BatchStatusFailed, openai.BatchStatusExpired, openai.BatchStatusCancelled:
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch %s still %s: %+v", id, b.Status, b.RequestCounts)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// awaitCompleted polls a batch until n of its lines have completed.
func awaitCompleted(t *testing.T, oa openai.Client, id string, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := oa.Batches.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if got.RequestCounts.Completed >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d lines completed: %+v", n, got.RequestCounts)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func uploadBatch(t *testing.T, oa openai.Client, jsonl string) *openai.FileObject {
	t.Helper()
	f, err := oa.Files.New(context.Background(), openai.FileNewParams{File: openai.File(strings.NewReader(jsonl), "input.jsonl", "application/jsonl"),
		Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func newBatch(t *testing.T, oa openai.Client, fileID string) *openai.Batch {
	t.Helper()
	b, err := oa.Batches.New(context.Background(), openai.BatchNewParams{InputFileID: fileID,
		Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The OpenAI Go SDK runs a batch on the fleet: the file is uploaded, the
// batch runs every line as a job, and the output file answers every
// custom_id once; another tenant sees neither the batch nor its files.
func TestBatchAPIWithTheOpenAISDK(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_TOKENS": "3"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	const n = 40
	alone, err := oa.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "sim",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("not in the batch")}})
	if err != nil {
		t.Fatal(err)
	}
	in := uploadBatch(t, oa, batchInput(n))
	if in.Purpose != openai.FileObjectPurposeBatch || in.Bytes != int64(len(batchInput(n))) || in.Filename != "input.jsonl" {
		t.Fatalf("file %+v", in)
	}
	b := newBatch(t, oa, in.ID)
	if b.Status != openai.BatchStatusInProgress || b.RequestCounts.Total != n {
		t.Fatalf("new batch %+v", b)
	}
	b = awaitBatch(t, oa, b.ID)
	if b.Status != openai.BatchStatusCompleted || b.RequestCounts.Completed != n || b.RequestCounts.Failed != 0 || b.OutputFileID == "" || b.ErrorFileID != "" {
		t.Fatalf("batch %+v", b)
	}
	lines := readLines(t, oa, b.OutputFileID)
	seen := map[string]bool{}
	for _, l := range lines {
		if seen[l.CustomID] {
			t.Fatalf("%s answered twice", l.CustomID)
		}
		seen[l.CustomID] = true
		var i int
		fmt.Sscanf(l.CustomID, "req-%d", &i)
		want := fmt.Sprintf("echo: question %d lorem ipsum dolor", i)
		if l.Response == nil || l.Response.StatusCode != 200 || l.Error != nil || len(l.Response.Body.Choices) != 1 ||
			l.Response.Body.Choices[0].Message.Content != want || l.Response.Body.Usage.CompletionTokens == 0 {
			t.Fatalf("line %+v, want %q", l, want)
		}
	}
	if len(seen) != n {
		t.Fatalf("%d of %d custom_ids answered", len(seen), n)
	}
	// The lines are in the tenant's usage ledger, with the tokens their
	// answers report, and they are its batch part.
	var completion int64
	for _, l := range lines {
		completion += l.Response.Body.Usage.CompletionTokens
	}
	u := do(t, http.MethodGet, apis[0].URL()+"/api/v1/usage", nil, map[string]string{"Authorization": "Bearer " + keyAcme})
	total, _ := u.Body["total"].(map[string]any)
	part, _ := total["batch"].(map[string]any)
	if u.Status != http.StatusOK || total["requests"] != float64(n+1) || total["completion_tokens"] != float64(completion+alone.Usage.CompletionTokens) ||
		part["requests"] != float64(n) || part["completion_tokens"] != float64(completion) {
		t.Fatalf("usage after %d lines of %d completion tokens and one request alone: %d %s", n, completion, u.Status, u.Raw)
	}
	// The lines' jobs are gone once their answers are in the batch: its
	// Redis cost is its lines in flight, not every line it ran.
	r := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs", nil, map[string]string{"Authorization": "Bearer " + keyAcme})
	if data, _ := r.Body["data"].([]any); r.Status != http.StatusOK || len(data) != 1 {
		t.Fatalf("the tenant's jobs after the batch: %d %s", r.Status, r.Raw)
	}
	if job := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs/"+lines[0].Response.RequestID, nil,
		map[string]string{"Authorization": "Bearer " + keyAcme}); job.Status != http.StatusNotFound {
		t.Fatalf("a line's job after the batch: %d %s", job.Status, job.Raw)
	}
	page, err := oa.Batches.List(context.Background(), openai.BatchListParams{})
	if err != nil || len(page.Data) != 1 || page.Data[0].ID != b.ID {
		t.Fatalf("list %+v %v", page, err)
	}

	// Another tenant: 404 for the batch, its input and its output.
	other := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyBeta), option.WithMaxRetries(0))
	for what, call := range map[string]func() error{
		"batch":  func() error { _, err := other.Batches.Get(context.Background(), b.ID); return err },
		"cancel": func() error { _, err := other.Batches.Cancel(context.Background(), b.ID); return err },
		"input":  func() error { _, err := other.Files.Get(context.Background(), in.ID); return err },
		"output": func() error { _, err := other.Files.Content(context.Background(), b.OutputFileID); return err },
		"delete": func() error { _, err := other.Files.Delete(context.Background(), in.ID); return err },
	} {
		var apiErr *openai.Error
		if err := call(); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
			t.Errorf("another tenant's %s: %v, want 404", what, err)
		}
	}
	if list, err := other.Files.List(context.Background(), openai.FileListParams{}); err != nil || len(list.Data) != 0 {
		t.Errorf("another tenant lists files %+v %v", list, err)
	}
}

// A malformed input file fails the batch in validation, naming its lines;
// nothing runs.
func TestBatchWithABadLineFailsInValidation(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_BATCH_MAX_REQUESTS": "6"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	lines := strings.Split(strings.TrimSpace(batchInput(6)), "\n")
	lines[2] = `{"custom_id":"req-2","method":"POST","url":"/v1/chat/completions","body":` // cut short
	lines[4] = strings.Replace(lines[4], `"url":"/v1/chat/completions"`, `"url":"/v1/embeddings"`, 1)
	b := newBatch(t, oa, uploadBatch(t, oa, strings.Join(lines, "\n")+"\n").ID)
	if b.Status != openai.BatchStatusFailed || len(b.Errors.Data) != 2 || b.Errors.Data[0].Line != 3 || b.Errors.Data[1].Line != 5 ||
		b.Errors.Data[1].Code != "mismatched_endpoint" {
		t.Fatalf("batch %+v errors %+v", b, b.Errors.Data)
	}
	time.Sleep(500 * time.Millisecond) // a runner round or two
	r := do(t, http.MethodGet, apis[0].URL()+"/api/v1/chat/jobs", nil, map[string]string{"Authorization": "Bearer " + keyAcme})
	if data, _ := r.Body["data"].([]any); r.Status != http.StatusOK || len(data) != 0 {
		t.Fatalf("a failed batch ran jobs: %d %s", r.Status, r.Raw)
	}
	// An upload over the line limit is refused, naming it, and nothing is
	// written.
	_, err := oa.Files.New(context.Background(), openai.FileNewParams{File: openai.File(strings.NewReader(batchInput(7)), "x.jsonl", "application/jsonl"),
		Purpose: openai.FilePurposeBatch})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || !strings.Contains(apiErr.Message, "CHATFLEET_BATCH_MAX_REQUESTS") {
		t.Fatalf("a file over the line limit: %v", err)
	}
	if list, err := oa.Files.List(context.Background(), openai.FileListParams{}); err != nil || len(list.Data) != 1 {
		t.Fatalf("files after a refused upload: %+v %v", list, err)
	}
}

// Cancelling a batch mid-run ends it cancelled, with the output of the lines
// that completed, each once.
func TestCancelledBatchKeepsItsCompletedLines(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_LATENCY": "300ms",
		"CHATFLEET_WORKER_CONCURRENCY": "4"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	const n = 60
	b := newBatch(t, oa, uploadBatch(t, oa, batchInput(n)).ID)
	awaitCompleted(t, oa, b.ID, 4)
	if c, err := oa.Batches.Cancel(context.Background(), b.ID); err != nil || (c.Status != openai.BatchStatusCancelling && c.Status != openai.BatchStatusCancelled) {
		t.Fatalf("cancel %+v %v", c, err)
	}
	b = awaitBatch(t, oa, b.ID)
	if b.Status != openai.BatchStatusCancelled || b.RequestCounts.Completed == 0 || b.RequestCounts.Completed >= n {
		t.Fatalf("cancelled batch %+v", b.RequestCounts)
	}
	answeredOnce(t, append(readLines(t, oa, b.OutputFileID), readLines(t, oa, b.ErrorFileID)...))
	if out := readLines(t, oa, b.OutputFileID); int64(len(out)) != b.RequestCounts.Completed {
		t.Fatalf("%d output lines for %d completed", len(out), b.RequestCounts.Completed)
	}
}

// A worker SIGKILLed mid-batch: its lines are taken over as any job is, and
// every line is answered exactly once.
func TestBatchSurvivesAWorkerKilledMidRun(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, workers := fleet(t, rd, 1, 2, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_LATENCY": "200ms",
		"CHATFLEET_WORKER_CONCURRENCY": "8"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	const n = 80
	b := newBatch(t, oa, uploadBatch(t, oa, batchInput(n)).ID)
	awaitCompleted(t, oa, b.ID, 10)
	workers[0].Signal(syscall.SIGKILL)
	b = awaitBatch(t, oa, b.ID)
	if b.Status != openai.BatchStatusCompleted || b.RequestCounts.Completed != n || b.ErrorFileID != "" {
		t.Fatalf("batch after the kill %+v %+v", b.Status, b.RequestCounts)
	}
	if seen := answeredOnce(t, readLines(t, oa, b.OutputFileID)); len(seen) != n {
		t.Fatalf("%d of %d custom_ids answered", len(seen), n)
	}
}

// A chat completion submitted while a 2,000-line batch fills every slot of
// the fleet waits only for the next free slot: it ends within its time alone
// plus one line's time (and a margin for this machine), not behind the
// batch's backlog (2,000 lines at 4 slots of 500 ms: 250 s).
func TestInteractiveRequestsDoNotWaitBehindABatch(t *testing.T) {
	rd := testkit.StartRedis(t)
	const line = 500 * time.Millisecond
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_LATENCY": line.String(),
		"CHATFLEET_WORKER_CONCURRENCY": "4"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	ask := func() time.Duration {
		start := time.Now()
		got, err := oa.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "sim",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("now")}})
		if err != nil || len(got.Choices) != 1 || !strings.HasPrefix(got.Choices[0].Message.Content, "echo: now") {
			t.Fatalf("completion %+v %v", got, err)
		}
		return time.Since(start)
	}
	alone := ask()
	b := newBatch(t, oa, uploadBatch(t, oa, batchInput(2000)).ID)
	awaitCompleted(t, oa, b.ID, 4) // every slot has had a line
	for i := range 3 {
		took := ask()
		t.Logf("during the batch (%d): %s; alone: %s; a line: %s", i, took.Round(time.Millisecond), alone.Round(time.Millisecond), line)
		if took > alone+line+line/2 {
			t.Fatalf("a completion during the batch took %s, want at most its %s alone plus a line's %s (and %s of margin)", took, alone, line, line/2)
		}
	}
	got, err := oa.Batches.Get(context.Background(), b.ID)
	if err != nil || got.Status != openai.BatchStatusInProgress || got.RequestCounts.Completed >= 2000 {
		t.Fatalf("the batch should still run: %+v %v", got, err)
	}
	if _, err := oa.Batches.Cancel(context.Background(), b.ID); err != nil {
		t.Fatal(err)
	}
}
