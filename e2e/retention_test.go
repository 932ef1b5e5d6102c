package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// What a finished job leaves in Redis: the fleet's own record of it (and,
// for a stored response, the response's record with its input), not a
// second copy of its payload in asynq's finished task. Measured as the
// memory of every key of the private Redis (MEMORY USAGE, exact), before a
// request and after its job has finished and asynq is done with its task.
func TestFinishedJobsKeepNoCopyOfTheirPayload(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_RESPONSES_MAX_CONVERSATION_BYTES": "2000000"})
	base := apis[0].URL()
	c := rd.Client()
	insp := asynq.NewInspectorFromRedisClient(c)
	create := func(body map[string]any) string {
		t.Helper()
		r := do(t, http.MethodPost, base+"/v1/responses", body, nil)
		if r.Status != http.StatusOK || r.Body["status"] != "completed" {
			t.Fatalf("create: %d %.300s", r.Status, r.Raw)
		}
		id := r.Body["id"].(string)
		waitTaskDone(t, insp, "job_"+strings.TrimPrefix(id, "resp_"))
		return id
	}
	create(map[string]any{"model": "sim", "input": "warm up"}) // the fleet's first keys

	// A finished response whose input is 100 KB (a long message, then a short
	// question: the simulated reply echoes the question alone).
	const inputBytes = 100_000
	before := keysMemory(t, c)
	create(map[string]any{"model": "sim", "input": []map[string]any{
		{"role": "user", "content": strings.Repeat("x", inputBytes)},
		{"role": "user", "content": "ok?"},
	}})
	perJob := keysMemory(t, c) - before
	t.Logf("a finished job with a %d-byte input: Redis grew by %d bytes (%.2fx the input)", inputBytes, perJob, float64(perJob)/inputBytes)
	if perJob > inputBytes*13/10 {
		t.Errorf("a finished job with a %d-byte input takes %d bytes of Redis (%.2fx the input), over 1.3x", inputBytes, perJob, float64(perJob)/inputBytes)
	}

	// A chain of three 120 KB inputs (each echoed back), then a 2-byte request
	// that follows it: its task carries the chain's reference, not the chain.
	prev := ""
	for i := 1; i <= 3; i++ {
		body := map[string]any{"model": "sim", "input": fmt.Sprintf("step %d ", i) + strings.Repeat("y", 120_000)}
		if prev != "" {
			body["previous_response_id"] = prev
		}
		prev = create(body)
	}
	before = keysMemory(t, c)
	create(map[string]any{"model": "sim", "input": "hi", "previous_response_id": prev})
	grown := keysMemory(t, c) - before
	t.Logf("a 2-byte request after a chain of three 120 KB inputs: Redis grew by %d bytes", grown)
	if grown > 200_000 {
		t.Errorf("a 2-byte request after a chain of three 120 KB inputs grew Redis by %d bytes, over 200 KB", grown)
	}
}

// The conversation that the worker assembles from a chain is the one the
// provider always got: the instructions, every earlier input and answer in
// order, then the new input.
func TestWorkerAssemblesTheWholeChain(t *testing.T) {
	rd := testkit.StartRedis(t)
	fake := llmfake.NewOpenAI(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, nil))
	prev := ""
	var want []llmfake.Message
	for i := 1; i <= 3; i++ {
		in := fmt.Sprintf("question %d", i)
		body := map[string]any{"model": "fake-model", "input": in, "instructions": "be brief"}
		if prev != "" {
			body["previous_response_id"] = prev
		}
		r := do(t, http.MethodPost, apis[0].URL()+"/v1/responses", body, nil)
		if r.Status != http.StatusOK || r.Body["status"] != "completed" {
			t.Fatalf("step %d: %d %.300s", i, r.Status, r.Raw)
		}
		prev = r.Body["id"].(string)
		want = append(want, llmfake.Message{Role: "user", Content: in})
		got := lastRequest(fake)
		full := append([]llmfake.Message{{Role: "system", Content: "be brief"}}, want...)
		if fmt.Sprint(got) != fmt.Sprint(full) {
			t.Fatalf("step %d: the provider got\n%v\nwant\n%v", i, got, full)
		}
		want = append(want, llmfake.Message{Role: "assistant", Content: llmfake.Reply(in)})
	}
}

// A response of the chain that is deleted (or expires) after a request that
// follows it was accepted, and before that request runs, fails the request
// with previous_response_not_found: the worker reads the chain when it runs.
func TestChainGoneBeforeTheJobRunsFailsIt(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, workers := fleet(t, rd, 1, 1, nil)
	base := apis[0].URL()
	first := do(t, http.MethodPost, base+"/v1/responses", map[string]any{"model": "sim", "input": "one"}, nil)
	if first.Status != http.StatusOK || first.Body["status"] != "completed" {
		t.Fatalf("first: %d %.300s", first.Status, first.Raw)
	}
	workers[0].Signal(syscall.SIGSTOP) // nothing runs until the chain is gone
	t.Cleanup(func() { workers[0].Signal(syscall.SIGCONT) })
	next := do(t, http.MethodPost, base+"/v1/responses", map[string]any{"model": "sim", "input": "two",
		"previous_response_id": first.Body["id"], "background": true}, nil)
	if next.Status != http.StatusOK || next.Body["status"] != "queued" {
		t.Fatalf("next: %d %.300s", next.Status, next.Raw)
	}
	if d := do(t, http.MethodDelete, base+"/v1/responses/"+first.Body["id"].(string), nil, nil); d.Status != http.StatusOK {
		t.Fatalf("delete: %d %s", d.Status, d.Raw)
	}
	workers[0].Signal(syscall.SIGCONT)
	id := next.Body["id"].(string)
	if j := waitJob(t, base, "job_"+strings.TrimPrefix(id, "resp_")); j.Body["status"] != "failed" {
		t.Fatalf("the job of a response whose chain went before it ran: %s", j.Raw)
	}
	r := do(t, http.MethodGet, base+"/v1/responses/"+id, nil, nil)
	errObj, _ := r.Body["error"].(map[string]any)
	if r.Body["status"] != "failed" || errObj["code"] != "previous_response_not_found" {
		t.Fatalf("a response whose chain went before it ran: %s", r.Raw)
	}
}

// waitTaskDone waits until asynq is done with a job's task: deleted, or
// completed and retained.
func waitTaskDone(t *testing.T, insp *asynq.Inspector, jobID string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		queues, err := insp.Queues()
		if err != nil {
			t.Fatal(err)
		}
		done := true
		for _, q := range queues {
			info, err := insp.GetTaskInfo(q, jobID)
			if err == nil && info.State != asynq.TaskStateCompleted {
				done = false
			} else if err != nil && !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
				t.Fatal(err)
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("asynq is not done with %s's task", jobID)
		}
		time.Sleep(20 * time.Millisecond) // asynq marks a task done just after the job's final event
	}
}

// keysMemory is the memory of every key of a Redis (MEMORY USAGE, every
// element counted).
func keysMemory(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	ctx := context.Background()
	var total int64
	iter := c.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		n, err := c.MemoryUsage(ctx, iter.Val(), 0).Result()
		if err != nil && !errors.Is(err, redis.Nil) { // a key that expired meanwhile
			t.Fatal(err)
		}
		total += n
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}
