package llm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Error is a provider failure with its retry class.
type Error struct {
	Provider   string
	Status     int           // upstream HTTP status; 0 when none
	Retryable  bool          // a later attempt may succeed
	RetryAfter time.Duration // the upstream's Retry-After, if any
	Msg        string
	// RequestFault is the upstream's own message when it rejected the request
	// itself (400, 413, 422 with a JSON error message, e.g. a context length
	// exceeded): the one detail the caller may be shown. Empty otherwise.
	RequestFault string
	// Timeout: the provider sent no first token, or stalled between tokens,
	// for longer than allowed. AfterOutput: it had already sent part of the
	// reply, which makes it no health failure for the breaker.
	Timeout, AfterOutput bool
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s: %d: %s", e.Provider, e.Status, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Provider, e.Msg)
}

// RetryableStatus reports whether an upstream HTTP status is worth another
// attempt: timeouts, conflicts from overload, rate limits and server errors.
// 400, 401, 403, 404, 422 and content-policy refusals are not.
func RetryableStatus(code int) bool {
	return code == http.StatusRequestTimeout || code == http.StatusConflict ||
		code == http.StatusTooEarly || code == http.StatusTooManyRequests || code >= 500
}

// httpError classifies an upstream answer with an error status: the SDK's
// parsed message, else the raw body, else the status text.
func httpError(provider string, code int, res *http.Response, msg, raw string) *Error {
	fault := ""
	if code == http.StatusBadRequest || code == http.StatusRequestEntityTooLarge || code == http.StatusUnprocessableEntity {
		fault = msg // parsed from the upstream's JSON error, never a raw body
		if len(fault) > 300 {
			fault = fault[:300] + "…"
		}
	}
	if msg == "" {
		msg = raw
	}
	if msg == "" {
		msg = http.StatusText(code)
	}
	var h http.Header
	if res != nil {
		h = res.Header
	}
	return &Error{Provider: provider, Status: code, Retryable: RetryableStatus(code), RetryAfter: retryAfter(h), Msg: msg, RequestFault: fault}
}

// transportError classifies a failure without an upstream status: timeouts
// and connection errors are retryable; the caller's cancel is returned as is.
func transportError(ctx context.Context, provider string, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return err // canceled by the caller: not the provider's fault
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne):
		return &Error{Provider: provider, Retryable: true, Msg: err.Error()}
	}
	// A broken stream (EOF mid-body, malformed chunk) is worth another attempt.
	return &Error{Provider: provider, Retryable: true, Msg: err.Error()}
}

func retryAfter(h http.Header) time.Duration {
	if h == nil {
		return 0
	}
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// Retryable reports whether err is worth another attempt.
func Retryable(err error) bool {
	var pe *Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &pe) && pe.Retryable)
}
