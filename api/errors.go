package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
)

// Error is an API error: `{"error":{"code","message","field"}}` with a status.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// ResetAt is when a spent budget resets (insufficient_quota).
	ResetAt string `json:"reset_at,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errf(status int, code, field, msg string) *Error {
	return &Error{Status: status, Code: code, Field: field, Message: msg}
}

// retryAfterSeconds is what a 503 asks clients to wait before trying again.
const retryAfterSeconds = "1"

// handleError is the one place errors become HTTP statuses.
func handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var ae *Error
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
	case lifecycleError(c, err) != nil:
		ae = lifecycleError(c, err)
	case errors.As(err, &he):
		ae = errf(he.Code, codeForStatus(he.Code), "", http.StatusText(he.Code))
	default:
		ae = errf(http.StatusInternalServerError, "internal", "", "internal error")
	}
	if ae.Status >= 500 {
		zerolog.Ctx(c.Request().Context()).Error().Err(err).Int("status", ae.Status).Msg("request failed")
	}
	_ = c.JSON(ae.Status, map[string]*Error{"error": ae})
}

// lifecycleError maps the job lifecycle's errors to API errors (nil: not one
// of them). It sets Retry-After where the client should come back.
func lifecycleError(c echo.Context, err error) *Error {
	var spent *jobs.BudgetError
	switch {
	case errors.Is(err, store.ErrNotFound):
		return errf(http.StatusNotFound, "not_found", "id", "no such job")
	case errors.Is(err, jobs.ErrConflict):
		return errf(http.StatusConflict, "idempotency_conflict", "Idempotency-Key",
			"this Idempotency-Key was already used with a different request body")
	case errors.Is(err, jobs.ErrFinished):
		return errf(http.StatusConflict, "job_finished", "id", "the job has already finished")
	case errors.As(err, &spent):
		c.Response().Header().Set("Retry-After", strconv.Itoa(max(1, int(time.Until(spent.ResetAt).Seconds()+1))))
		e := errf(http.StatusTooManyRequests, "insufficient_quota", "", spent.Error())
		e.ResetAt = spent.ResetAt.UTC().Format(time.RFC3339)
		return e
	case errors.Is(err, store.ErrTooManyJobs):
		c.Response().Header().Set("Retry-After", retryAfterSeconds)
		return errf(http.StatusTooManyRequests, "too_many_jobs", "", "this tenant has as many unfinished jobs as it may have; wait for some to finish")
	case errors.Is(err, store.ErrUnavailable):
		c.Response().Header().Set("Retry-After", retryAfterSeconds)
		return errf(http.StatusServiceUnavailable, "unavailable", "", "the job store is unreachable; try again shortly")
	}
	return nil
}

func codeForStatus(s int) string {
	switch s {
	case http.StatusNotFound:
		return "not_found"
	case http.StatusMethodNotAllowed:
		return "method_not_allowed"
	case http.StatusRequestEntityTooLarge:
		return "body_too_large"
	case http.StatusUnauthorized:
		return "unauthorized"
	}
	if s >= 500 {
		return "internal"
	}
	return "bad_request"
}
