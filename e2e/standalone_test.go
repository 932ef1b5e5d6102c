package e2e

import (
	"net/http"
	"testing"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// What `make run` starts: bin/api --standalone with nothing configured and no
// Redis installed or running (embedded), then a submit and a poll.
func TestStandaloneRunsAJobWithNothingInstalled(t *testing.T) {
	api := testkit.StartProc(t, "api-standalone", apiBin,
		testkit.Env(map[string]string{"CHATFLEET_HTTP_ADDR": "127.0.0.1:0"}), "--standalone")
	t.Cleanup(httpc.CloseIdleConnections)

	r := submit(t, api.URL(), "sess_standalone", "hello there", nil)
	if r.Status != http.StatusAccepted || r.Body["status"] != "queued" {
		t.Fatalf("submit: %d %s", r.Status, r.Raw)
	}
	done := waitJob(t, api.URL(), r.Body["job_id"].(string))
	if done.Body["status"] != "succeeded" || content(done) != "echo: hello there" {
		t.Fatalf("job: %s", done.Raw)
	}
	h := do(t, http.MethodGet, api.URL()+"/api/v1/sessions/sess_standalone/messages", nil, nil)
	msgs, _ := h.Body["messages"].([]any)
	if h.Status != http.StatusOK || len(msgs) != 2 {
		t.Fatalf("history: %d %s", h.Status, h.Raw)
	}
}
