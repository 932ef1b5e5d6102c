// Package logging builds the one zerolog logger each process passes down.
package logging

import (
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"
)

func init() {
	// The spec's log shape: "timestamp" in RFC 3339, UTC, milliseconds.
	zerolog.TimestampFieldName = "timestamp"
	zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00"
	zerolog.TimestampFunc = func() time.Time { return time.Now().UTC() }
	zerolog.DurationFieldUnit = time.Millisecond
	zerolog.DurationFieldInteger = true
}

// New returns a JSON logger writing to w at the given level (trace..error).
func New(w io.Writer, level, process string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Str("process", process).Logger()
}

// Asynq adapts a zerolog logger to asynq's Logger interface so the queue's own
// messages come out in the same JSON shape.
type Asynq struct{ L zerolog.Logger }

func (a Asynq) Debug(args ...any) { a.L.Debug().Msg(fmt.Sprint(args...)) }
func (a Asynq) Info(args ...any)  { a.L.Info().Msg(fmt.Sprint(args...)) }
func (a Asynq) Warn(args ...any)  { a.L.Warn().Msg(fmt.Sprint(args...)) }
func (a Asynq) Error(args ...any) { a.L.Error().Msg(fmt.Sprint(args...)) }

// Fatal is called by asynq only for unrecoverable start-up errors; it must not
// exit the process, so it logs at error level and lets the caller return.
func (a Asynq) Fatal(args ...any) { a.L.Error().Bool("fatal", true).Msg(fmt.Sprint(args...)) }
