package client

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// These are unit tests of the client against an httptest server that speaks
// the API's wire format; the e2e suite runs the client against the fleet.

func TestSubmitSendsTheKeyAndDecodesErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer k" || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.Header.Get("Idempotency-Key") == "again" {
			w.Header().Set("Idempotent-Replayed", "true")
			fmt.Fprint(w, `{"job_id":"job_1","status":"queued","session_id":"s"}`)
			return
		}
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"error":{"code":"too_many_jobs","message":"wait","field":"x"}}`)
	}))
	defer srv.Close()
	c := New(srv.URL, WithAPIKey("k"))
	sub, err := c.Submit(context.Background(), SubmitRequest{SessionID: "s", Message: "m", IdempotencyKey: "again"})
	if err != nil || !sub.Replayed || sub.JobID != "job_1" {
		t.Fatalf("replay: %+v %v", sub, err)
	}
	_, err = c.Submit(context.Background(), SubmitRequest{SessionID: "s", Message: "m"})
	var ae *Error
	if !IsStatus(err, http.StatusTooManyRequests) || !asError(err, &ae) || ae.Code != "too_many_jobs" || ae.Field != "x" ||
		ae.RetryAfter != 3*time.Second || !ae.Temporary() {
		t.Fatalf("error: %#v", err)
	}
}

func asError(err error, out **Error) bool {
	e, ok := err.(*Error)
	*out = e
	return ok
}

// Wait long-polls until the job finishes, riding out a 503 on the way.
func TestWaitPollsUntilFinished(t *testing.T) {
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("wait") == "" {
			t.Errorf("Wait did not long-poll: %s", r.URL)
		}
		status := "active"
		switch polls.Add(1) {
		case 2: // Redis stalled for a moment: the wait goes on
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":{"code":"unavailable","message":"try again shortly"}}`)
			return
		case 4:
			status = "succeeded"
		}
		fmt.Fprintf(w, `{"job_id":"job_1","status":%q}`, status)
	}))
	defer srv.Close()
	j, err := New(srv.URL).Wait(context.Background(), "job_1")
	if err != nil || j.Status != "succeeded" || polls.Load() != 4 {
		t.Fatalf("%+v %v after %d polls", j, err, polls.Load())
	}
}

// A stream dropped mid-way resumes with Last-Event-ID; an event the server
// sends again is not delivered twice; a 503 is waited out.
func TestStreamResumesExactlyOnce(t *testing.T) {
	var conns atomic.Int32
	var lastIDs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := conns.Add(1)
		lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
		if n == 2 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":{"code":"unavailable","message":"later"}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		event := func(seq int, typ, data string) {
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: {\"seq\":%d,%s}\n\n", seq, typ, seq, data)
			w.(http.Flusher).Flush()
		}
		switch n {
		case 1:
			event(1, "token", `"delta":"a"`)
			event(2, "token", `"delta":"b"`)
			// the connection drops here
		default:
			event(2, "token", `"delta":"b"`) // a repeat the client must skip
			event(3, "retry", `"attempt":2,"reason":"r"`)
			event(4, "done", `"result":{"content":"ab"},"usage":{"prompt_tokens":1,"completion_tokens":2}`)
		}
	}))
	defer srv.Close()
	var got []string
	var reconnects atomic.Int32
	err := New(srv.URL).Stream(context.Background(), "job_1", StreamOptions{
		OnReconnect: func(error, int64) { reconnects.Add(1) },
	}, func(ev Event) error {
		got = append(got, fmt.Sprintf("%d:%s:%s%s", ev.Seq, ev.Type, ev.Delta, ev.Reason))
		if ev.Type == "done" && (ev.Result == nil || ev.Result.Content != "ab" || ev.Usage.CompletionTokens != 2) {
			t.Errorf("done event: %+v", ev)
		}
		return nil
	})
	want := "1:token:a 2:token:b 3:retry:r 4:done:"
	if err != nil || strings.Join(got, " ") != want {
		t.Fatalf("events %q, err %v; want %q", got, err, want)
	}
	if strings.Join(lastIDs, ",") != ",2,2" || reconnects.Load() < 2 {
		t.Fatalf("Last-Event-ID per connection %q, %d reconnects", lastIDs, reconnects.Load())
	}
}

func TestStreamStopsOnTheCallbacksError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "id: 1\nevent: token\ndata: {\"seq\":1,\"delta\":\"a\"}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	stop := fmt.Errorf("enough")
	err := New(srv.URL).Stream(context.Background(), "job_1", StreamOptions{}, func(Event) error { return stop })
	if err != stop {
		t.Fatalf("got %v, want the callback's error", err)
	}
}
