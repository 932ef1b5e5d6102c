package api

import (
	"context"
	"net/http"
	"net/http/httptest"
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
	_, sub := call(e, http.MethodPost, "/api/v1/chat/jobs", "application/json", `{"session_id":"s","message":"m"}`, nil)
	id, _ := sub["job_id"].(string)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/chat/jobs/"+id+"/stream", nil)
			if res, err := http.DefaultClient.Do(req); err == nil {
				res.Body.Close()
			}
		}()
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if res, err := http.Get(srv.URL + "/api/v1/chat/jobs/" + id); err == nil {
					res.Body.Close()
				}
			}()
		}
	}
	wg.Wait()
}
