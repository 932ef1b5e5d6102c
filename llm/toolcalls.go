package llm

import (
	"fmt"
	"strings"
)

// toolCalls assembles the tool calls of a streamed reply from an upstream's
// fragments and hands each on as an OpenAI-correct fragment: calls numbered
// 0, 1, … in the order they began, id and name on a call's first fragment,
// arguments that add up to the call's.
//
// OpenAI-compatible servers differ in how they number fragments: Ollama gives
// every parallel call index 0, older servers send no index, some send each
// call whole. A fragment is therefore matched to its call by id first; one
// without an id by its upstream index (the last call that had it), and
// failing that, to the call that began last.
type toolCalls struct {
	calls   []*ToolCall
	byID    map[string]int
	byIndex map[int64]int
	onDelta func(Delta) error
}

func newToolCalls(onDelta func(Delta) error) *toolCalls {
	return &toolCalls{byID: map[string]int{}, byIndex: map[int64]int{}, onDelta: onDelta}
}

// add takes one upstream fragment. hasIndex says whether the upstream sent
// an index at all.
func (t *toolCalls) add(index int64, hasIndex bool, id, name, args string) error {
	k, known := -1, false
	switch {
	case id != "":
		k, known = t.byID[id]
	case hasIndex:
		k, known = t.byIndex[index]
	case len(t.calls) > 0:
		k, known = len(t.calls)-1, true
	}
	if !known {
		k = len(t.calls)
		if id == "" {
			id = fmt.Sprintf("call_%d", k) // the upstream named none: clients need one to answer it
		}
		t.calls = append(t.calls, &ToolCall{ID: id, Type: "function"})
		t.byID[id] = k
		d := &ToolDelta{Index: k, ID: id, Name: name, Arguments: args}
		t.calls[k].Function.Name = name
		t.calls[k].Function.Arguments = args
		if hasIndex {
			t.byIndex[index] = k
		}
		return t.onDelta(Delta{Tool: d})
	}
	if hasIndex {
		t.byIndex[index] = k
	}
	c := t.calls[k]
	if c.Function.Name == "" && name != "" {
		// A name that comes late still goes out before any argument of it
		// that a client could see without one: it rides on this fragment.
		c.Function.Name = name
	} else {
		name = ""
	}
	if args == "" && name == "" {
		return nil
	}
	c.Function.Arguments += args
	return t.onDelta(Delta{Tool: &ToolDelta{Index: k, Name: name, Arguments: args}})
}

// done closes the reply's calls: a call with no arguments at all gets "{}"
// (valid JSON, as clients parse it). It returns the calls.
func (t *toolCalls) done() ([]ToolCall, error) {
	out := make([]ToolCall, len(t.calls))
	for k, c := range t.calls {
		if strings.TrimSpace(c.Function.Arguments) == "" {
			c.Function.Arguments = "{}"
			if err := t.onDelta(Delta{Tool: &ToolDelta{Index: k, Arguments: "{}"}}); err != nil {
				return nil, err
			}
		}
		out[k] = *c
	}
	return out, nil
}
