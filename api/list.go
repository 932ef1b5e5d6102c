package api

import (
	"net/http"
	"slices"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
)

// GET /api/v1/chat/jobs: the caller's jobs, newest first, paged with an
// opaque cursor, as far back as the retention.

var listStatuses = []string{store.StatusQueued, store.StatusActive, store.StatusRetrying, store.StatusSucceeded, store.StatusFailed, store.StatusCanceled}

func (s *Server) listJobs(c echo.Context) error {
	f := store.ListFilter{SessionID: c.QueryParam("session_id"), Status: c.QueryParam("status")}
	if f.SessionID != "" {
		if err := validSessionID(f.SessionID); err != nil {
			return errf(http.StatusBadRequest, "invalid_query", "session_id", err.(*Error).Message)
		}
	}
	if f.Status != "" && !slices.Contains(listStatuses, f.Status) {
		return errf(http.StatusBadRequest, "invalid_query", "status", "status must be queued, active, retrying, succeeded, failed or canceled")
	}
	limit := 20
	if q := c.QueryParam("limit"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > 100 {
			return errf(http.StatusBadRequest, "invalid_query", "limit", "limit must be a whole number from 1 to 100")
		}
		limit = n
	}
	q := c.QueryParam("cursor")
	after, err := store.ParseCursor(q)
	if len(q) > maxCursor || err != nil {
		return errf(http.StatusBadRequest, "invalid_query", "cursor", "cursor must be a next_cursor this list returned")
	}
	list, next, err := s.store.List(c.Request().Context(), tenantOf(c), f, limit, after)
	if err != nil {
		return err
	}
	data := make([]jobView, 0, len(list))
	for _, j := range list {
		data = append(data, renderJob(j))
	}
	var cursor any
	if next != nil {
		cursor = next.String()
	}
	return c.JSON(http.StatusOK, map[string]any{"data": data, "next_cursor": cursor, "has_more": next != nil})
}

// maxCursor bounds a cursor's length: a next_cursor is "<ms>.<job id>", well
// under it, and nothing longer is read further.
const maxCursor = 128
