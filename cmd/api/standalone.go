package main

import (
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/rs/zerolog"
)

// startEmbeddedRedis runs an in-memory Redis for standalone mode. miniredis does
// not expire keys by itself, so a ticker moves its clock along with the wall
// clock once a second (much cheaper than ClockTTL on every command).
func startEmbeddedRedis(log zerolog.Logger) (url string, stop func() error, err error) {
	m, err := miniredis.Run()
	if err != nil {
		return "", nil, err
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	log.Warn().Str("addr", m.Addr()).Msg("using an embedded in-memory Redis: every job is lost when the process stops")
	return "redis://" + m.Addr(), func() error { close(done); m.Close(); return nil }, nil
}
