package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/stream"
)

// respStride is how many sequence numbers each event of the job's log may
// use: the most one event becomes is five (close a function call, open a
// message with its part, a delta).
const respStride = 8

// streamResponse streams a response's events with OpenAI's sequence numbers.
// They are derived from the job's event log, so they are the same from every
// API process and a client resumes exactly with starting_after:
//   - the prelude is 0…P-1: response.created, (response.queued when in the
//     background,) response.in_progress;
//   - the job's event k uses P+(k-1)·respStride onwards: a token opens the
//     message item when none is open (output_item.added, content_part.added)
//     and is a response.output_text.delta; a tool_call fragment opens a
//     function_call item for a new call and is a
//     response.function_call_arguments.delta; opening an item closes the one
//     before it (…done events);
//   - the final event closes the open item and is response.completed (or
//     response.failed).
//
// Numbers are increasing, not consecutive. A resumed stream reads the log
// from the start of the attempt it shows, so it knows every open item, and
// sends only what comes after starting_after.
//
// OpenAI's format cannot take back output: when an attempt fails after part
// of its answer went out (a `retry` in the job's log), a stream that has
// shown any of it ends with an `error` event (code upstream_retry) while the
// response goes on; a new stream from the start shows only the latest
// attempt. cancelOnLeave: the job stops if its only client leaves.
func (s *Server) streamResponse(c echo.Context, rec respRecord, j store.Job, startingAfter int64, renew func(), cancelOnLeave bool) error {
	ctx := c.Request().Context()
	p := int64(2)
	if rec.Background {
		p = 3
	}
	// The attempt shown starts after the last retry the client has passed:
	// for a new stream, the last one in the log.
	passed := int64(math.MaxInt64)
	if startingAfter >= p {
		passed = (startingAfter-p)/respStride + 1
	} else if startingAfter >= 0 {
		passed = 0
	}
	evs, err := s.store.Events(ctx, j.ID, 0)
	if err != nil {
		return err
	}
	after := int64(0)
	for _, ev := range evs {
		if ev.Type == store.EventRetry && ev.Seq <= passed {
			after = ev.Seq
		}
	}
	sink := &respSink{srv: s, res: c.Response(), rec: rec, job: j.ID, p: p, skip: startingAfter, shown: startingAfter >= p}
	sink.reset()
	s.m.streamClients.Inc()
	defer s.m.streamClients.Dec()
	err = stream.Follow(ctx, s.hub, s.store, j.ID, after, s.opt.Heartbeat, leasedSink{sink, renew})
	if !sink.final && cancelOnLeave {
		if cur, gerr := s.store.Get(context.WithoutCancel(ctx), j.ID); gerr == nil && !store.Terminal(cur.Status) {
			s.abandon(ctx, cur, "the Responses client disconnected")
		}
	}
	if err != nil && !errors.Is(err, errRespEnded) && !c.Response().Committed {
		return err
	}
	return nil
}

var errRespEnded = errors.New("response stream ended")

// respItem is an output item of a streamed response.
type respItem struct {
	call   int // the tool call's index; -1 for the message
	callID string
	name   string
	text   strings.Builder // the message's text, or the call's arguments
	done   bool
}

type respSink struct {
	srv   *Server
	res   *echo.Response
	rec   respRecord
	job   string
	p     int64 // prelude length
	skip  int64 // starting_after; -1: none
	shown bool  // output of the current attempt went out
	final bool
	items []*respItem
	open  *respItem // the item that takes text deltas or is being opened
	calls map[int]*respItem
}

func (s *respSink) reset() {
	s.items, s.open, s.calls = nil, nil, map[int]*respItem{}
}

func (s *respSink) send(n int64, typ string, body map[string]any) error {
	if n <= s.skip {
		return nil
	}
	body["type"] = typ
	body["sequence_number"] = n
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.res, "event: %s\ndata: %s\n\n", typ, b); err != nil {
		return err
	}
	s.res.Flush()
	return nil
}

func (s *respSink) Open() error {
	sseHead(s.res)
	s.res.Flush()
	obj := func(st string) map[string]any { return s.srv.responseObjectAs(s.rec, st, nil, nil, nil) }
	first := "in_progress"
	if s.rec.Background {
		first = "queued"
	}
	n := int64(0)
	if err := s.send(n, "response.created", map[string]any{"response": obj(first)}); err != nil {
		return err
	}
	if s.rec.Background {
		n++
		if err := s.send(n, "response.queued", map[string]any{"response": obj("queued")}); err != nil {
			return err
		}
	}
	return s.send(n+1, "response.in_progress", map[string]any{"response": obj("in_progress")})
}

func (s *respSink) Heartbeat() error { return sseHeartbeat(s.res) }

// seq hands out the sequence numbers of one job event in order.
type seq struct{ n int64 }

func (q *seq) next() int64 { q.n++; return q.n - 1 }

func (s *respSink) index(it *respItem) int {
	for i, x := range s.items {
		if x == it {
			return i
		}
	}
	return -1
}

// add opens an item, closing the open one first.
func (s *respSink) add(q *seq, it *respItem) error {
	if err := s.closeOpen(q); err != nil {
		return err
	}
	s.items = append(s.items, it)
	s.open = it
	i := len(s.items) - 1
	if it.call < 0 {
		if err := s.send(q.next(), "response.output_item.added", map[string]any{"output_index": i, "item": messageItem(s.job, "in_progress", []any{})}); err != nil {
			return err
		}
		return s.send(q.next(), "response.content_part.added", map[string]any{"item_id": msgID(s.job), "output_index": i,
			"content_index": 0, "part": textPart("")})
	}
	s.calls[it.call] = it
	return s.send(q.next(), "response.output_item.added", map[string]any{"output_index": i,
		"item": functionCallItem(s.job, it.call, "in_progress", it.callID, it.name, "")})
}

// closeOpen sends the …done events of the open item.
func (s *respSink) closeOpen(q *seq) error {
	it := s.open
	if it == nil || it.done {
		return nil
	}
	it.done, s.open = true, nil
	i := s.index(it)
	if it.call < 0 {
		text := it.text.String()
		if err := s.send(q.next(), "response.output_text.done", map[string]any{"item_id": msgID(s.job), "output_index": i, "content_index": 0,
			"text": text, "logprobs": []any{}}); err != nil {
			return err
		}
		if err := s.send(q.next(), "response.content_part.done", map[string]any{"item_id": msgID(s.job), "output_index": i, "content_index": 0,
			"part": textPart(text)}); err != nil {
			return err
		}
		return s.send(q.next(), "response.output_item.done", map[string]any{"output_index": i, "item": messageItem(s.job, "completed", []any{textPart(text)})})
	}
	args := it.text.String()
	if err := s.send(q.next(), "response.function_call_arguments.done", map[string]any{"item_id": fcID(s.job, it.call), "output_index": i,
		"name": it.name, "arguments": args}); err != nil {
		return err
	}
	return s.send(q.next(), "response.output_item.done", map[string]any{"output_index": i,
		"item": functionCallItem(s.job, it.call, "completed", it.callID, it.name, args)})
}

func (s *respSink) Event(ev store.Event) error {
	pl, err := ev.Decode()
	if err != nil {
		return err
	}
	q := &seq{n: s.p + (ev.Seq-1)*respStride}
	if q.n > s.skip {
		if _, isToken := pl.(store.TokenEvent); isToken {
			s.shown = true
		} else if _, isCall := pl.(store.ToolCallEvent); isCall {
			s.shown = true
		}
	}
	switch pl := pl.(type) {
	case store.TokenEvent:
		if s.open == nil || s.open.call >= 0 {
			if err := s.add(q, &respItem{call: -1}); err != nil {
				return err
			}
		}
		s.open.text.WriteString(pl.Delta)
		return s.send(q.next(), "response.output_text.delta", map[string]any{"item_id": msgID(s.job), "output_index": s.index(s.open),
			"content_index": 0, "delta": pl.Delta, "logprobs": []any{}})
	case store.ToolCallEvent:
		it, ok := s.calls[pl.Index]
		if !ok {
			it = &respItem{call: pl.Index, callID: pl.ID, name: pl.Name}
			if err := s.add(q, it); err != nil {
				return err
			}
		}
		if pl.Arguments == "" {
			return nil
		}
		it.text.WriteString(pl.Arguments)
		return s.send(q.next(), "response.function_call_arguments.delta", map[string]any{"item_id": fcID(s.job, it.call),
			"output_index": s.index(it), "delta": pl.Arguments})
	case store.RetryEvent:
		if !s.shown {
			s.reset() // nothing of the failed attempt was shown here
			return nil
		}
		s.final = true
		if err := s.send(q.next(), "error", map[string]any{"code": "upstream_retry", "param": nil,
			"message": "the provider failed mid-answer and the answer starts over; stream the response again from the start, or poll it"}); err != nil {
			return err
		}
		return errRespEnded
	case store.DoneEvent:
		s.final = true
		if err := s.closeOpen(q); err != nil {
			return err
		}
		return s.send(q.next(), "response.completed", map[string]any{"response": s.srv.responseObjectAs(s.rec, "completed", pl.Result, pl.Usage, nil)})
	case store.ErrorEvent:
		s.final = true
		return s.send(q.next(), "response.failed", map[string]any{"response": s.srv.responseObjectAs(s.rec, "failed", nil, nil, pl.Error)})
	case store.CanceledEvent:
		s.final = true
		return s.send(q.next(), "response.failed", map[string]any{"response": s.srv.responseObjectAs(s.rec, "cancelled", nil, nil, nil)})
	}
	return nil
}
