// Package httpserve runs an HTTP server with timeouts that stop slow clients
// without cutting long-lived streams, and shuts it down gracefully.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"
)

// Server is a started HTTP server.
type Server struct {
	srv     *http.Server
	ln      net.Listener
	done    chan error
	closing context.CancelFunc
}

// Option changes a server setting.
type Option func(*http.Server)

// WithReadTimeout replaces the 30 s bound on reading a request.
func WithReadTimeout(d time.Duration) Option { return func(s *http.Server) { s.ReadTimeout = d } }

// Start listens on addr (":0" picks a free port) and serves h in the background.
// It logs the bound address as "http server listening" with field addr.
// The read timeout stops slow clients trickling in a request; it does not cut
// streams or long polls, since Go's server lifts the read deadline once a
// request has been read (a test in package api holds it to that).
func Start(addr string, h http.Handler, log zerolog.Logger, opts ...Option) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	base, closing := context.WithCancel(context.Background())
	s := &Server{
		closing: closing,
		srv: &http.Server{
			// Request contexts end when shutdown starts, so that streams and
			// long polls return at once instead of holding the drain.
			BaseContext:       func(net.Listener) context.Context { return base },
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second, // slow-loris bodies; request bodies are small
			IdleTimeout:       120 * time.Second,
			// No WriteTimeout: it would cut SSE streams and long polls, which
			// bound themselves.
		},
		ln:   ln,
		done: make(chan error, 1),
	}
	for _, o := range opts {
		o(s.srv)
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("http server listening")
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Done delivers the error that stopped serving, if serving stops by itself.
func (s *Server) Done() <-chan error { return s.done }

// Shutdown stops accepting, waits for requests in flight until ctx ends, then
// closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	return err
}
