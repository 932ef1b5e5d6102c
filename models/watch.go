package models

import (
	"bytes"
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Watch re-reads the models file every `every` and at once on SIGHUP, until
// ctx ends. It reads the file first thing and calls apply with it when it
// parses (the caller may hold the same list already: apply must take a list
// equal to the one in force in its stride). After that, apply is called only
// when the content has changed and parses, and the reload is logged. A file
// that does not read or parse is logged once per distinct content, naming
// each problem, and the list in force stays. A list apply refuses (the
// error says why) is logged the same way and offered again at the next
// read, until it is applied or the file changes.
func Watch(ctx context.Context, path string, getenv func(string) string, every time.Duration, log zerolog.Logger, apply func(*Set) error) {
	// Installed before the first read, so that a SIGHUP sent once the first
	// list is applied is never the default action (which ends the process).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(every)
	defer tick.Stop()

	var applied []byte // content of the list in force; nil before the first
	lastFailure := ""  // what was logged last, so that it is not repeated
	first := true
	read := func() {
		defer func() { first = false }()
		data, err := os.ReadFile(path)
		if err == nil && applied != nil && bytes.Equal(data, applied) {
			lastFailure = ""
			return
		}
		var set *Set
		failure := ""
		if err != nil {
			failure = "read\x00" + err.Error()
		} else if set, err = Parse(data, getenv); err != nil {
			failure = "parse\x00" + string(data)
		} else if err = apply(set); err != nil {
			failure = "apply\x00" + string(data) + "\x00" + err.Error()
		}
		if err != nil {
			if failure != lastFailure {
				// One line: the problems, each naming its entry and field.
				log.Error().Str("path", path).
					Msg("models file refused, the models in force stay: " + strings.ReplaceAll(err.Error(), "\n", "; "))
				lastFailure = failure
			}
			return
		}
		lastFailure = ""
		applied = data
		if first {
			log.Debug().Str("path", path).Strs("models", set.Names()).Msg("models file read")
		} else {
			log.Info().Str("path", path).Strs("models", set.Names()).Msg("models file reloaded")
		}
	}
	read()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-hup:
		}
		read()
	}
}
