package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// A batch of Responses requests: every line's answer is a response object
// that openai-go reads, with the line's instructions carried to the model;
// a line that asks to stream fails the batch in validation, naming it.
func TestBatchOfResponses(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_TOKENS": "3"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	const n = 12
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"custom_id":"r-%d","method":"POST","url":"/v1/responses","body":{"model":"sim","input":"question %d","metadata":{"row":"%d"}}}`+"\n", i, i, i)
	}
	create := func(jsonl string) *openai.Batch {
		b, err := oa.Batches.New(context.Background(), openai.BatchNewParams{InputFileID: uploadBatch(t, oa, jsonl).ID,
			Endpoint: openai.BatchNewParamsEndpointV1Responses, CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := awaitBatch(t, oa, create(in.String()).ID)
	if b.Status != openai.BatchStatusCompleted || b.RequestCounts.Completed != n || b.ErrorFileID != "" {
		t.Fatalf("batch %s %+v", b.Status, b.RequestCounts)
	}
	res, err := oa.Files.Content(context.Background(), b.OutputFileID)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		var l struct {
			CustomID string `json:"custom_id"`
			Response struct {
				StatusCode int                `json:"status_code"`
				Body       responses.Response `json:"body"`
			} `json:"response"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s: %v", sc.Text(), err)
		}
		var i int
		fmt.Sscanf(l.CustomID, "r-%d", &i)
		body := l.Response.Body
		want := fmt.Sprintf("echo: question %d lorem ipsum dolor", i)
		if seen[l.CustomID] || l.Response.StatusCode != 200 || body.Object != "response" || !strings.HasPrefix(body.ID, "resp_") ||
			body.Status != responses.ResponseStatusCompleted || body.OutputText() != want || body.Usage.OutputTokens == 0 ||
			body.Metadata["row"] != fmt.Sprint(i) {
			t.Fatalf("line %s (seen before: %v): %s, want the text %q", l.CustomID, seen[l.CustomID], sc.Text(), want)
		}
		seen[l.CustomID] = true
	}
	if len(seen) != n {
		t.Fatalf("%d of %d custom_ids answered", len(seen), n)
	}

	streamed := strings.Replace(in.String(), `"input":"question 3"`, `"input":"question 3","stream":true`, 1)
	bad := create(streamed)
	if bad.Status != openai.BatchStatusFailed || len(bad.Errors.Data) != 1 || bad.Errors.Data[0].Line != 4 || bad.Errors.Data[0].Param != "body.stream" {
		t.Fatalf("a streamed line: batch %s errors %+v", bad.Status, bad.Errors.Data)
	}
	chat := strings.Replace(in.String(), `"url":"/v1/responses"`, `"url":"/v1/chat/completions"`, 1)
	if bad := create(chat); bad.Status != openai.BatchStatusFailed || bad.Errors.Data[0].Code != "mismatched_endpoint" {
		t.Fatalf("a Chat Completions line in a Responses batch: %s %+v", bad.Status, bad.Errors.Data)
	}
}

// An upload over CHATFLEET_FILES_MAX_BYTES is refused with 413 naming the
// limit, and nothing is written.
func TestFileOverTheByteLimitIsRefused(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 0, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_FILES_MAX_BYTES": "4096"})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	fits := batchInput(40)[:4000]
	fits = fits[:strings.LastIndexByte(fits, '\n')+1]
	uploadBatch(t, oa, fits) // under the limit: taken
	for _, size := range []int{4097, 256 << 10} {
		over := strings.Repeat(batchInput(1), size/len(batchInput(1))+1)
		_, err := oa.Files.New(context.Background(), openai.FileNewParams{File: openai.File(strings.NewReader(over), "big.jsonl", "application/jsonl"),
			Purpose: openai.FilePurposeBatch})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusRequestEntityTooLarge || apiErr.Code != "file_too_large" ||
			!strings.Contains(apiErr.Message, "CHATFLEET_FILES_MAX_BYTES") {
			t.Fatalf("a %d-byte upload: %v", len(over), err)
		}
	}
	if list, err := oa.Files.List(context.Background(), openai.FileListParams{}); err != nil || len(list.Data) != 1 {
		t.Fatalf("files after the refused uploads: %+v %v", list.Data, err)
	}
}

// At the end of its window a batch's lines not yet started are answered
// batch_expired in its error file, the running ones finish, and it ends
// expired with its partial output, each line once, telling batch.expired.
// The window's end is moved to now in the batch's record: 24 hours is the
// only window.
func TestBatchExpiresAtTheEndOfItsWindow(t *testing.T) {
	rd := testkit.StartRedis(t)
	rcv := startReceiver(t, "127.0.0.1:0", http.StatusOK)
	secret := newSecret(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_LATENCY": "300ms",
		"CHATFLEET_WORKER_CONCURRENCY": "2", "CHATFLEET_WEBHOOK_ALLOW_PRIVATE": "true",
		"CHATFLEET_WEBHOOKS_FILE": webhooksFile(t, map[string]any{"tenant": "acme", "url": rcv.url, "secret": secret, "events": []string{"batch.expired"}})})
	oa := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	const n = 60
	b := newBatch(t, oa, uploadBatch(t, oa, batchInput(n)).ID)
	awaitCompleted(t, oa, b.ID, 2)
	if err := rd.Client().HSet(context.Background(), rkeys.Batch("acme", b.ID), "expires_at", time.Now().UnixMilli()).Err(); err != nil {
		t.Fatal(err)
	}
	b = awaitBatch(t, oa, b.ID)
	c := b.RequestCounts
	if b.Status != openai.BatchStatusExpired || b.ExpiredAt == 0 || c.Completed == 0 || c.Completed+c.Failed != n || c.Failed == 0 {
		t.Fatalf("batch %s %+v", b.Status, c)
	}
	out, errs := readLines(t, oa, b.OutputFileID), readLines(t, oa, b.ErrorFileID)
	seen := answeredOnce(t, append(out, errs...))
	for _, l := range errs {
		if l.Error == nil || l.Error.Code != "batch_expired" || l.Response != nil {
			t.Fatalf("error line %+v, want batch_expired", l)
		}
	}
	if len(seen) != n || int64(len(out)) != c.Completed || int64(len(errs)) != c.Failed {
		t.Fatalf("%d custom_ids answered, %d output and %d error lines for %+v", len(seen), len(out), len(errs), c)
	}
	h := rcv.waitFor(t, 20*time.Second, "batch.expired", func(h []hook) bool { return len(h) >= 1 })
	verifier := openai.NewClient(option.WithWebhookSecret(secret), option.WithAPIKey("unused"))
	ev, err := verifier.Webhooks.Unwrap(h[0].body, h[0].header)
	if err != nil || ev.Type != "batch.expired" || ev.AsBatchExpired().Data.ID != b.ID {
		t.Fatalf("webhook %s: %v", h[0].body, err)
	}
}

// Batch lines count against their tenant's budget as any job: every line's
// reservation is settled at what it cost (none left reserved once the
// lines' jobs are gone), and a tenant past its budget has its lines
// answered insufficient_quota in the error file.
func TestBatchLinesAreHeldToTheBudget(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_SIM_TOKENS": "3",
		"CHATFLEET_TENANT_BUDGETS": "acme:tokens=100000/day;beta:tokens=1/day"})
	const n = 20
	acme := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyAcme), option.WithMaxRetries(0))
	b := awaitBatch(t, acme, newBatch(t, acme, uploadBatch(t, acme, batchInput(n)).ID).ID)
	if b.Status != openai.BatchStatusCompleted || b.RequestCounts.Completed != n {
		t.Fatalf("batch %s %+v", b.Status, b.RequestCounts)
	}
	var tokens int64
	for _, l := range readLines(t, acme, b.OutputFileID) {
		tokens += l.Response.Body.Usage.TotalTokens
	}
	u := do(t, http.MethodGet, apis[0].URL()+"/api/v1/usage", nil, map[string]string{"Authorization": "Bearer " + keyAcme})
	if budget, _ := u.Body["budget"].(map[string]any); budget == nil || budget["spent"] != float64(tokens) || budget["reserved"] != float64(0) {
		t.Fatalf("acme's budget after %d lines of %d tokens: %s", n, tokens, u.Raw)
	}

	beta := openai.NewClient(option.WithBaseURL(apis[0].URL()+"/v1"), option.WithAPIKey(keyBeta), option.WithMaxRetries(0))
	// beta's budget lets one line in (a submit is refused once the budget
	// is spent or held by the jobs in flight): the rest are refused.
	b = awaitBatch(t, beta, newBatch(t, beta, uploadBatch(t, beta, batchInput(5)).ID).ID)
	if b.Status != openai.BatchStatusCompleted || b.RequestCounts.Failed < 4 || b.RequestCounts.Completed+b.RequestCounts.Failed != 5 {
		t.Fatalf("a batch past the budget: %s %+v", b.Status, b.RequestCounts)
	}
	for _, l := range readLines(t, beta, b.ErrorFileID) {
		if l.Error == nil || l.Error.Code != "insufficient_quota" {
			t.Fatalf("error line %+v, want insufficient_quota", l)
		}
	}
}
