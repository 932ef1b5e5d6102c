package api

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// A stream served off its hijacked connection does not touch the echo
// context once its handler has returned: echo hands that context to the next
// request (run under -race, as make test does).
func TestHijackedStreamLeavesTheContext(t *testing.T) {
	e, _ := newAPIWith(t, Options{StreamMaxDuration: 300 * time.Millisecond, Heartbeat: 20 * time.Millisecond})
	srv := httptest.NewServer(e)
	defer srv.Close()
	code, sub := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, nil)
	id, _ := sub["job_id"].(string)
	if code.Code != http.StatusAccepted || id == "" {
		t.Fatalf("submit: %d %v", code.Code, sub)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/chat/jobs/"+id+"/stream", nil)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("stream: %v", err)
				return
			}
			defer res.Body.Close()
			// The stream stands until its maximum duration: the queued job
			// sends heartbeats meanwhile.
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != http.StatusOK || !strings.Contains(string(body), ": heartbeat") {
				t.Errorf("stream: %d %q", res.StatusCode, body)
			}
		}()
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := http.Get(srv.URL + "/api/v1/chat/jobs/" + id)
				if err != nil {
					t.Errorf("get: %v", err)
					return
				}
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					t.Errorf("get: %d", res.StatusCode)
				}
			}()
		}
	}
	wg.Wait()
}
