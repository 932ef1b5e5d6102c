package store

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

func TestParseEvent(t *testing.T) {
	ev, err := ParseEvent(`token {"seq":12,"delta":"hi there"}`)
	if err != nil || ev.Seq != 12 || ev.Type != "token" || ev.Data != `{"seq":12,"delta":"hi there"}` {
		t.Fatalf("%+v %v", ev, err)
	}
	if ev, err := ParseEvent(`canceled {"seq":3}`); err != nil || ev.Seq != 3 {
		t.Fatalf("%+v %v", ev, err)
	}
	for _, bad := range []string{"", "token", `token {"delta":"x"}`, `token {"seq":x}`, `token {"seq":0}`, `token {"seq":5`} {
		if _, err := ParseEvent(bad); err == nil {
			t.Errorf("ParseEvent(%q) accepted", bad)
		}
	}
	if id, ok := rkeys.JobIDOfChannel(rkeys.LiveChannel("job_abc")); !ok || id != "job_abc" {
		t.Fatalf("channel round trip: %q %v", id, ok)
	}
	if _, ok := rkeys.JobIDOfChannel("chatfleet:job::live"); ok {
		t.Fatal("empty id accepted")
	}
}

// The event table in docs/api.md is the SSE contract; each row must name
// exactly the JSON fields of its payload type, and each type must decode back
// to itself.
func TestEventTableMatchesThePayloadTypes(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(\\w+)` \\| `\\{([^`]*)\\}` \\|")
	documented := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		var fields []string
		for _, f := range strings.Split(m[2], ",") {
			fields = append(fields, strings.Trim(f, `"`))
		}
		documented[m[1]] = fields
	}
	payloads := []Payload{
		TokenEvent{Seq: 1, Delta: "hi"},
		ToolCallEvent{Seq: 1, Index: 1, ID: "call_1", Name: "f", Arguments: `{"a"`},
		RetryEvent{Seq: 2, Attempt: 2, Reason: "r"},
		DoneEvent{Seq: 3, Result: &Result{Content: "c"}, Usage: &Usage{1, 2}},
		ErrorEvent{Seq: 4, Error: &JobError{Code: "x", Message: "y"}},
		CanceledEvent{Seq: 5},
	}
	if len(documented) != len(payloads) {
		t.Fatalf("docs/api.md documents %d event types %v, the code has %d", len(documented), documented, len(payloads))
	}
	for _, p := range payloads {
		var fields []string
		typ := reflect.TypeOf(p)
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			fields = append(fields, name)
		}
		if want := documented[p.EventType()]; !slices.Equal(fields, want) {
			t.Errorf("%s: type has fields %v, docs/api.md says %v", p.EventType(), fields, want)
		}
		b, _ := json.Marshal(p)
		back, err := Event{Type: p.EventType(), Data: string(b)}.Decode()
		if err != nil || !reflect.DeepEqual(back, p) {
			t.Errorf("%s: decoded %#v (%v), want %#v", p.EventType(), back, err, p)
		}
	}
	if _, err := (Event{Type: "nope", Data: "{}"}).Decode(); err == nil {
		t.Error("an unknown event type decoded")
	}
}
