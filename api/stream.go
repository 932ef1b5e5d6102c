package api

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
)

// streamJob follows a job over Server-Sent Events: every event after
// Last-Event-ID (or from the start), exactly once and in order, then the live
// ones until the job's final event. A client that disconnects does not cancel
// the job: it may reconnect, to any API process, with Last-Event-ID.
//
// An open stream mostly waits, so it is served from the hijacked connection
// on a goroutine of its own: net/http's connection goroutine, its background
// reader and its buffers are released, which roughly halves the memory of an
// idle stream. A client that went away is noticed at the next write (at the
// latest the heartbeat after next).
func (s *Server) streamJob(c echo.Context) error {
	after, field, err := lastEventID(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	j, err := s.jobs.Get(ctx, c.Param("id"), tenantOf(c))
	if err != nil {
		return err
	}
	if after > 0 {
		// EventSource reconnects after the server closes, even after the
		// final event: 204 is how the HTML standard tells it to stop.
		// A followed job's latest events may have gone out live ahead of
		// its log: they count.
		seq, final, err := s.store.Reach(ctx, j.ID)
		if err != nil {
			return err
		}
		switch {
		case final && after >= seq:
			return c.NoContent(http.StatusNoContent)
		case after > seq:
			return errf(http.StatusBadRequest, "invalid_header", field,
				fmt.Sprintf("%s %d is beyond the job's log (%d events so far)", field, after, seq))
		}
	}
	renew, release, err := s.openStream(c, j.Tenant)
	if err != nil {
		return err
	}
	// Subscribe while a failure can still be answered with a JSON 503.
	sub, err := s.hub.Subscribe(ctx, j.ID)
	if err != nil {
		release()
		return err
	}
	conn, _, err := http.NewResponseController(c.Response()).Hijack()
	if err != nil {
		// Not hijackable (HTTP/2): serve the stream from the handler.
		defer release()
		defer sub.Close()
		s.m.streamClients.Inc()
		defer s.m.streamClients.Dec()
		sctx, cancel := context.WithTimeout(ctx, s.opt.StreamMaxDuration)
		defer cancel()
		return stream.FollowSubscribed(sctx, sub, s.store, j.ID, after, s.opt.Heartbeat, leasedSink{&sseSink{res: c.Response()}, renew})
	}
	c.Response().Status = http.StatusOK // for the request log; the answer goes out below
	// The goroutine outlives the handler, and echo reuses c for the next
	// request: it takes what it needs of c now.
	requestID := c.Response().Header().Get(echo.HeaderXRequestID)
	s.m.streamClients.Inc()
	s.streams.Add(1)
	go func() {
		defer s.streams.Done()
		defer s.m.streamClients.Dec()
		defer release()
		defer sub.Close()
		defer conn.Close()
		// The stream ends cleanly after StreamMaxDuration; the client resumes
		// with Last-Event-ID.
		sctx, cancel := context.WithTimeout(s.opt.Closing, s.opt.StreamMaxDuration)
		defer cancel()
		sink := &connSink{conn: conn, requestID: requestID}
		_ = stream.FollowSubscribed(sctx, sub, s.store, j.ID, after, s.opt.Heartbeat, leasedSink{sink, renew})
	}()
	return nil
}

// retryHint tells EventSource how long to wait before it reconnects.
const retryHint = "retry: 2000\n\n"

// streamHeader opens a hijacked stream: the body ends when the connection closes.
const streamHeader = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n" +
	"Connection: close\r\nX-Accel-Buffering: no\r\n"

// writeTimeout drops a client that stops reading.
const writeTimeout = 10 * time.Second

// connSink writes events straight to a hijacked connection.
type connSink struct {
	conn      net.Conn
	requestID string // validated by the request middleware: printable ASCII
	buf       []byte
}

func (s *connSink) write(b []byte) error {
	_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := s.conn.Write(b)
	return err
}

func (s *connSink) Open() error {
	h := streamHeader
	if s.requestID != "" {
		h += echo.HeaderXRequestID + ": " + s.requestID + "\r\n"
	}
	return s.write([]byte(h + "\r\n" + retryHint))
}

func (s *connSink) Event(ev store.Event) error {
	s.buf = appendEvent(s.buf[:0], ev)
	return s.write(s.buf)
}

func (s *connSink) Heartbeat() error { return s.write([]byte(": heartbeat\n\n")) }

// appendEvent formats one event in the text/event-stream format.
func appendEvent(b []byte, ev store.Event) []byte {
	b = append(b, "id: "...)
	b = strconv.AppendInt(b, ev.Seq, 10)
	b = append(b, "\nevent: "...)
	b = append(b, ev.Type...)
	b = append(b, "\ndata: "...)
	b = append(b, ev.Data...)
	return append(b, "\n\n"...)
}

// lastEventID reads Last-Event-ID, or ?last_event_id= for pages that cannot
// set headers, and names where it came from.
func lastEventID(c echo.Context) (int64, string, error) {
	v := c.Request().Header.Get("Last-Event-ID")
	field := "Last-Event-ID"
	if v == "" {
		v, field = c.QueryParam("last_event_id"), "last_event_id"
	}
	if v == "" {
		return 0, field, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, field, errf(http.StatusBadRequest, "invalid_header", field, field+" must be a whole number of 0 or more")
	}
	return n, field, nil
}

// sseSink writes events in the text/event-stream format through the
// response, flushing each.
type sseSink struct {
	res *echo.Response
	buf []byte
}

func (s *sseSink) Open() error {
	h := s.res.Header()
	h.Set("Connection", "keep-alive")
	sseHead(s.res)
	if _, err := s.res.Write([]byte(retryHint)); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

func (s *sseSink) Event(ev store.Event) error {
	s.buf = appendEvent(s.buf[:0], ev)
	if _, err := s.res.Write(s.buf); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

func (s *sseSink) Heartbeat() error { return sseHeartbeat(s.res) }
