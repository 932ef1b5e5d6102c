package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// One tenant's burst of the largest requests the API takes (32 at once,
// each 128 tools of a 64 KiB schema, 8.4 MB) against one API process at its
// default limits: its peak RSS stays under CHATFLEET_MAX_INFLIGHT_BYTES plus
// 200 MB, what is over the tenant's share is refused 429
// too_many_bytes_in_flight with Retry-After, another tenant's submits during
// the burst all get 202, and nothing gets a 503.
func TestLargeRequestsAreBoundedInFlight(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_API_KEYS": keysEnv(), "CHATFLEET_TENANT_RATE": "0", "CHATFLEET_SIM_TOKENS": "3"})
	api := apis[0]
	body := testkit.LargeToolsBody("chatfleet", 128)
	t.Logf("body %d bytes; API RSS before %.0f MB", len(body), vmKB(t, api.Pid(), "VmRSS")/1024)

	const burst, others = 32, 8
	codes := make(chan string, burst+others)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			codes <- "acme " + send(t, api.URL()+"/v1/chat/completions", keyAcme, body)
		}()
	}
	for i := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			codes <- "beta " + send(t, api.URL()+"/api/v1/chat/jobs", keyBeta, fmt.Appendf(nil, `{"session_id":"quiet-%d","message":"hi"}`, i))
		}()
	}
	close(start)
	wg.Wait()
	close(codes)
	count := map[string]int{}
	for c := range codes {
		count[c]++
	}
	peak := vmKB(t, api.Pid(), "VmHWM") * 1024
	t.Logf("answers %v; API peak RSS %.0f MB", count, peak/1e6)
	if count["acme 200"] == 0 || count["acme 429 too_many_bytes_in_flight"] == 0 || count["acme 200"]+count["acme 429 too_many_bytes_in_flight"] != burst {
		t.Errorf("the burst's answers: %v, want some 200 and the rest 429 too_many_bytes_in_flight", count)
	}
	if count["beta 202"] != others {
		t.Errorf("the other tenant's submits during the burst: %v, want %d × 202", count, others)
	}
	if limit := float64(256<<20 + 200e6); peak > limit {
		t.Errorf("the API's peak RSS was %.0f MB, want under %.0f MB (CHATFLEET_MAX_INFLIGHT_BYTES + 200 MB)", peak/1e6, limit/1e6)
	}
}

// send posts body with a tenant's key and returns the status, with the
// error code of a refusal ("429 too_many_bytes_in_flight"). A refusal
// without Retry-After is reported as such.
func send(t *testing.T, url, key string, body []byte) string {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := httpc.Do(req)
	if err != nil {
		return "error " + err.Error()
	}
	defer res.Body.Close()
	if res.StatusCode < 400 {
		return strconv.Itoa(res.StatusCode)
	}
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.NewDecoder(res.Body).Decode(&e)
	out := fmt.Sprintf("%d %s", res.StatusCode, e.Error.Code)
	if res.StatusCode == http.StatusTooManyRequests && res.Header.Get("Retry-After") == "" {
		out += " without Retry-After"
	}
	return out
}

// vmKB reads a field of a process's /proc status in KB (VmRSS, VmHWM: the
// peak).
func vmKB(t *testing.T, pid int, field string) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// A large request (16 tools of a 64 KiB schema, 1 MB) is kept in Redis
// once, in its record: its task names it, the worker reads it as the
// attempt starts, the upstream gets every tool as sent, and once the job
// has succeeded Redis keeps nothing of it but the finished record.
func TestLargeBodyTravelsByReference(t *testing.T) {
	fake := llmfake.NewOpenAI(t)
	fake.Always(llmfake.Step{FirstByteDelay: time.Second})
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, providerEnv(fake, nil))
	ctx := context.Background()
	body := testkit.LargeToolsBody("fake-model", 16)
	// What Redis keeps: the bytes of its keys (MEMORY USAGE, every field
	// counted). Its used_memory moves by a megabyte with the buffers a 1 MB
	// command passes through.
	used := func() float64 {
		var sum int64
		iter := rd.Client().Scan(ctx, 0, "*", 1000).Iterator()
		for iter.Next(ctx) {
			n, err := rd.Client().MemoryUsage(ctx, iter.Val(), 0).Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				t.Fatal(err)
			}
			sum += n
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		return float64(sum)
	}
	before := used()
	answered := make(chan string, 1)
	go func() { answered <- send(t, apis[0].URL()+"/v1/chat/completions", "", body) }()
	deadline := time.Now().Add(20 * time.Second)
	for fake.InFlight() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if fake.InFlight() == 0 {
		t.Fatal("the upstream was not called")
	}
	during := used()
	// The record's payload is what the job's task carries (a worker runs
	// the jobs it is handed without one; a retry's task carries it).
	var tasksBytes, bodyBytes int64
	iter := rd.Client().Scan(ctx, 0, "*:job:job_*", 100).Iterator()
	for iter.Next(ctx) {
		if strings.Count(iter.Val(), ":") != 3 { // the record, not its event log
			continue
		}
		n, err := rd.Client().HStrLen(ctx, iter.Val(), "payload").Result()
		if err != nil {
			t.Fatal(err)
		}
		tasksBytes += n
		if bodyBytes, err = rd.Client().HStrLen(ctx, iter.Val(), "body").Result(); err != nil {
			t.Fatal(err)
		}
	}
	if tasksBytes == 0 || tasksBytes > 4096 || bodyBytes < int64(len(body))/2 {
		t.Errorf("the job's task payload holds %d bytes, want a reference of at most 4 KB; its body %d bytes, want about the request's %d", tasksBytes, bodyBytes, len(body))
	}
	if got := <-answered; got != "200" {
		t.Fatalf("the request got %s", got)
	}
	after := used()
	t.Logf("a %d-byte request: Redis used %+.0f KB while the job ran (its task %d bytes), %+.0f KB after it", len(body), (during-before)/1024, tasksBytes, (after-before)/1024)
	if during-before > 1.2*float64(len(body)) {
		t.Errorf("Redis grew by %.0f KB while the job ran, want the body kept once (%d KB)", (during-before)/1024, len(body)/1024)
	}
	if after-before > 32<<10 {
		t.Errorf("Redis keeps %.0f KB after the job, want only its finished record", (after-before)/1024)
	}
	var sent, got struct {
		Tools []any `json:"tools"`
	}
	if err := json.Unmarshal(body, &sent); err != nil {
		t.Fatal(err)
	}
	up, _ := json.Marshal(fake.LastBody())
	if err := json.Unmarshal(up, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Tools) != 16 || !reflect.DeepEqual(got.Tools, sent.Tools) {
		t.Errorf("the upstream got %d tools, want the 16 sent, as sent", len(got.Tools))
	}
}
