package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	sse "github.com/tmaxmax/go-sse"
)

// Event is one event of a job's stream.
type Event struct {
	Seq   int64  `json:"seq"`
	Type  string `json:"-"` // token, tool_call, retry, done, error, canceled
	Delta string `json:"delta"`
	// tool_call: a fragment of the Index-th call, ID and Name when first seen.
	Index     int       `json:"index"`
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Arguments string    `json:"arguments"`
	Attempt   int       `json:"attempt"` // retry: the attempt that follows
	Reason    string    `json:"reason"`  // retry: why the last attempt failed
	Result    *Result   `json:"result"`
	Usage     *Usage    `json:"usage"`
	Error     *JobError `json:"error"`
}

// Final reports whether the event ends the job's stream.
func (e Event) Final() bool { return e.Type == "done" || e.Type == "error" || e.Type == "canceled" }

// StreamOptions tunes Stream.
type StreamOptions struct {
	// After is the last event already seen; the stream starts after it.
	After int64
	// RetryFor bounds how long a dropped or refused connection is retried
	// (default 30s). Each retry resumes after the last event received.
	RetryFor time.Duration
	// OnReconnect is told about every reconnect and the error that caused it.
	OnReconnect func(err error, after int64)
}

// Stream follows a job's events and calls fn for each, in order, exactly once,
// until the final event (done, error or canceled), an error from fn, or ctx's
// end. A dropped connection is resumed transparently with Last-Event-ID.
// A `retry` event means: discard the output shown so far.
func (c *Client) Stream(ctx context.Context, id string, opt StreamOptions, fn func(Event) error) error {
	if opt.RetryFor <= 0 {
		opt.RetryFor = 30 * time.Second
	}
	last := opt.After
	for {
		err := c.streamOnce(ctx, id, &last, opt, fn)
		var ae *Error
		if errors.As(err, &ae) && ae.Temporary() && ctx.Err() == nil {
			// A 503 ends go-sse's own retries; wait as asked and resume.
			if opt.OnReconnect != nil {
				opt.OnReconnect(err, last)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(max(ae.RetryAfter, 100*time.Millisecond)):
			}
			continue
		}
		return err
	}
}

var errStreamEnded = errors.New("stream ended")

func (c *Client) streamOnce(ctx context.Context, id string, last *int64, opt StreamOptions, fn func(Event) error) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := c.newRequest(sctx, http.MethodGet, "/api/v1/chat/jobs/"+url.PathEscape(id)+"/stream", nil, nil)
	if err != nil {
		return err
	}
	if *last > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(*last, 10))
	}
	sc := &sse.Client{
		HTTPClient: c.http,
		ResponseValidator: func(res *http.Response) error {
			if res.StatusCode != http.StatusOK {
				return decodeError(res)
			}
			return nil
		},
		Backoff: sse.Backoff{InitialInterval: 100 * time.Millisecond, Multiplier: 2, MaxInterval: 2 * time.Second, MaxElapsedTime: opt.RetryFor},
		OnRetry: func(err error, _ time.Duration) {
			if opt.OnReconnect != nil {
				opt.OnReconnect(err, *last)
			}
		},
	}
	conn := sc.NewConnection(req)
	conn.SubscribeToAll(func(e sse.Event) {
		if e.Data == "" {
			return // a block with no data (the server's retry hint) is no event
		}
		var ev Event
		if err := json.Unmarshal([]byte(e.Data), &ev); err != nil {
			cancel(fmt.Errorf("chatfleet: malformed %s event: %w", e.Type, err))
			return
		}
		ev.Type = e.Type
		if ev.Seq <= *last {
			return // already delivered before a reconnect
		}
		*last = ev.Seq
		if err := fn(ev); err != nil {
			cancel(err)
			return
		}
		if ev.Final() {
			cancel(errStreamEnded)
		}
	})
	err = conn.Connect()
	if cause := context.Cause(sctx); cause != nil && ctx.Err() == nil {
		if errors.Is(cause, errStreamEnded) {
			return nil
		}
		return cause
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	return err
}
