package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Event types of a job's log.
const (
	EventToken    = "token"    // {"seq","delta"}
	EventRetry    = "retry"    // {"seq","attempt","reason"}: discard the output shown so far
	EventDone     = "done"     // {"seq","result","usage"}
	EventError    = "error"    // {"seq","error"}
	EventCanceled = "canceled" // {"seq"}
)

// FinalEvent reports whether an event type ends a job's log.
func FinalEvent(typ string) bool {
	return typ == EventDone || typ == EventError || typ == EventCanceled
}

// Event is one entry of a job's log. Data is the JSON object sent to clients;
// it includes "seq".
type Event struct {
	Seq  int64
	Type string
	Data string
}

// ErrJobFinished is returned when an event is offered for a job that has
// already ended (canceled while it ran): nothing may follow its final event.
var ErrJobFinished = errors.New("job already finished")

// ParseEvent decodes a log entry or pub/sub message: `<type> {"seq":N,...}`.
func ParseEvent(entry string) (Event, error) {
	typ, data, ok := strings.Cut(entry, " ")
	if !ok || !strings.HasPrefix(data, `{"seq":`) {
		return Event{}, fmt.Errorf("malformed event %.40q", entry)
	}
	num := data[len(`{"seq":`):]
	end := strings.IndexAny(num, ",}")
	if end < 0 {
		return Event{}, fmt.Errorf("malformed event %.40q", entry)
	}
	seq, err := strconv.ParseInt(num[:end], 10, 64)
	if err != nil || seq < 1 {
		return Event{}, fmt.Errorf("malformed event seq %.40q", entry)
	}
	return Event{Seq: seq, Type: typ, Data: data}, nil
}

// AppendEvent adds an event to a running job's log and publishes it.
// body is a JSON object without "seq".
func (s *Store) AppendEvent(ctx context.Context, id, typ string, body any) (int64, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, fmt.Errorf("encode %s event: %w", typ, err)
	}
	n, err := appendEvent.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Events(id)},
		typ, string(b), seconds(s.opt.Retention), rkeys.LiveChannel(id)).Int64()
	switch {
	case err != nil:
		return 0, unavailable("append event", err)
	case n == 0:
		return 0, ErrJobFinished
	case n < 0:
		return 0, ErrNotFound
	}
	return n, nil
}

// Events returns a job's log after seq `after`, oldest first.
func (s *Store) Events(ctx context.Context, id string, after int64) ([]Event, error) {
	raw, err := s.rdb.LRange(ctx, rkeys.Events(id), after, -1).Result()
	if err != nil {
		return nil, unavailable("read events", err)
	}
	out := make([]Event, 0, len(raw))
	for _, r := range raw {
		ev, err := ParseEvent(r)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// LastEvent returns the newest event of a job's log (ok=false when empty).
func (s *Store) LastEvent(ctx context.Context, id string) (Event, bool, error) {
	raw, err := s.rdb.LRange(ctx, rkeys.Events(id), -1, -1).Result()
	if err != nil {
		return Event{}, false, unavailable("read events", err)
	}
	if len(raw) == 0 {
		return Event{}, false, nil
	}
	ev, err := ParseEvent(raw[0])
	return ev, err == nil, err
}

// finalEvent is the event Finish appends for an outcome.
func finalEvent(o Outcome) (string, any) {
	switch o.Status {
	case StatusSucceeded:
		return EventDone, map[string]any{"result": o.Result, "usage": o.Usage}
	case StatusCanceled:
		return EventCanceled, struct{}{}
	}
	return EventError, map[string]any{"error": o.Error}
}
