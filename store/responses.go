package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/tasks"
)

// A /v1/responses response is a job (its answer is the job's result) and a
// record of its own (rkeys.Response, a JSON string): the request's fields,
// its input and its parent's id. A chain of responses is stored by
// reference, each record holding its own input only; the API checks a chain
// when a response follows it, and the worker assembles the conversation from
// it when the job runs (ResponseChain).

// Response is the record of a /v1/responses response. Its fields keep their
// Go names in JSON: records written by earlier releases read the same.
type Response struct {
	ID, Tenant, Model, Instructions, Previous, User string
	Background, Store                               bool
	CreatedAt                                       int64
	Metadata                                        map[string]string
	// Input is the request's input items, as input_items lists them. An
	// item whose content or output is one of Messages names it ("message":
	// its index) instead of holding a second copy.
	Input []map[string]any
	// Messages is this request's input as chat messages.
	Messages []tasks.ChatMessage `json:",omitempty"`
	// ConversationBytes is the size of the conversation up to this input.
	ConversationBytes int `json:",omitempty"`
	// Conversation is the whole conversation as records before the chain
	// was stored by reference kept it (read, never written).
	Conversation      []tasks.ChatMessage `json:",omitempty"`
	MaxOutputTokens   *int
	Temperature, TopP *float64
	Params            *tasks.GenParams `json:",omitempty"` // tools, tool choice, text format, reasoning
}

var (
	// ErrResponseGone: a response of a chain has expired or was deleted
	// (or is not the tenant's, or was not stored).
	ErrResponseGone = errors.New("previous response not found")
	// ErrResponseUnfinished: a response of a chain has no answer to follow.
	ErrResponseUnfinished = errors.New("previous response has not completed")
)

// ResponseJobID is the job of a response id ("resp_X" is "job_X").
func ResponseJobID(respID string) string { return "job_" + strings.TrimPrefix(respID, "resp_") }

// ValidResponseID reports whether id has the shape of a response id.
func ValidResponseID(id string) bool {
	return strings.HasPrefix(id, "resp_") && tasks.ValidJobID(ResponseJobID(id))
}

// Response reads a response's record, whoever's it is (ErrNotFound when it
// is missing or the id is malformed).
func (s *Store) Response(ctx context.Context, id string) (Response, error) {
	var r Response
	if !ValidResponseID(id) {
		return r, ErrNotFound
	}
	raw, err := s.rdb.Get(ctx, rkeys.Response(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return r, ErrNotFound
	}
	if err != nil {
		return r, unavailable("get response", err)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return r, fmt.Errorf("response record %s: %w", id, err)
	}
	return r, nil
}

// ResponseChain assembles the conversation that the tenant's stored
// response prev ends: every input and answer of its chain, oldest first,
// walked back by reference (plain reads: on a cluster the records are in
// other slots). A response of the chain that is gone is ErrResponseGone, one
// without an answer ErrResponseUnfinished, each naming the response.
func (s *Store) ResponseChain(ctx context.Context, prev, tenant string) ([]tasks.ChatMessage, error) {
	var steps [][]tasks.ChatMessage // newest first
	for id := prev; id != ""; {
		r, err := s.Response(ctx, id)
		if err == nil && (r.Tenant != tenant || !r.Store) {
			err = ErrNotFound
		}
		var j Job
		if err == nil {
			j, err = s.Get(ctx, ResponseJobID(id))
		}
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("response %s: %w", id, ErrResponseGone)
		}
		if err != nil {
			return nil, err
		}
		if j.Status != StatusSucceeded || j.Result == nil {
			return nil, fmt.Errorf("response %s: %w", id, ErrResponseUnfinished)
		}
		answer := tasks.ChatMessage{Role: "assistant", Content: j.Result.Content, ToolCalls: j.Result.ToolCalls}
		if r.Conversation != nil { // a record that kept the whole conversation
			steps = append(steps, append(slices.Clone(r.Conversation), answer))
			break
		}
		steps = append(steps, append(slices.Clone(r.Messages), answer))
		id = r.Previous
	}
	var out []tasks.ChatMessage
	for i := len(steps) - 1; i >= 0; i-- {
		out = append(out, steps[i]...)
	}
	return out, nil
}
