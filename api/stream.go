package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
)

// streamJob follows a job over Server-Sent Events: every event after
// Last-Event-ID (or from the start), exactly once and in order, then the live
// ones until the job's final event. A client that disconnects does not cancel
// the job: it may reconnect, to any API process, with Last-Event-ID.
func (s *Server) streamJob(c echo.Context) error {
	after, err := lastEventID(c)
	if err != nil {
		return err
	}
	j, err := s.lookup(c.Request().Context(), c.Param("id"), tenantOf(c))
	if err != nil {
		return err
	}
	s.m.streamClients.Inc()
	defer s.m.streamClients.Dec()
	return stream.Follow(c.Request().Context(), s.hub, s.store, j.ID, after, s.opt.Heartbeat, &sseSink{res: c.Response()})
}

func lastEventID(c echo.Context) (int64, error) {
	v := c.Request().Header.Get("Last-Event-ID")
	field := "Last-Event-ID"
	if v == "" {
		v, field = c.QueryParam("last_event_id"), "last_event_id"
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errf(http.StatusBadRequest, "invalid_header", field, field+" must be a whole number of 0 or more")
	}
	return n, nil
}

// sseSink writes events in the text/event-stream format, flushing each.
type sseSink struct{ res *echo.Response }

func (s *sseSink) Open() error {
	h := s.res.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no") // let proxies pass events through at once
	s.res.WriteHeader(http.StatusOK)
	s.res.Flush()
	return nil
}

func (s *sseSink) Event(ev store.Event) error {
	if _, err := fmt.Fprintf(s.res, "id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, ev.Type, ev.Data); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

func (s *sseSink) Heartbeat() error {
	if _, err := s.res.Write([]byte(": heartbeat\n\n")); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

// cancelJob stops a job: a queued one never runs, an active one has its
// provider call aborted and is not retried; a finished one is a conflict.
func (s *Server) cancelJob(c echo.Context) error {
	ctx := c.Request().Context()
	j, err := s.lookup(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return err
	}
	alreadyFinished := errf(http.StatusConflict, "job_finished", "id", "the job has already finished")
	if store.Terminal(j.Status) {
		return alreadyFinished
	}
	first, err := s.cancel(ctx, j, "canceled on request")
	if err != nil {
		return err
	}
	if !first {
		return alreadyFinished // it finished between the read and the cancel
	}
	if j, err = s.store.Get(ctx, j.ID); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, renderJob(j))
}

// cancel ends an unfinished job as canceled and stops it: its task is removed
// if it has not started, its provider call aborted if it has. It reports
// whether this call canceled it (false: it had finished already).
func (s *Server) cancel(ctx context.Context, j store.Job, why string) (bool, error) {
	first, err := s.store.Finish(ctx, j.ID, j.Tenant, j.SessionID, store.Outcome{
		Status: store.StatusCanceled, Error: &store.JobError{Code: "canceled", Message: why},
	})
	if err != nil || !first {
		return false, err
	}
	// The record is canceled, so no worker will run or retry the job; removing
	// the task and aborting a running call make it stop now.
	if err := s.insp.DeleteTask(j.Queue, j.ID); err != nil {
		_ = s.insp.CancelProcessing(j.ID)
	}
	return true, nil
}
