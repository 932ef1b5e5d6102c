package store

import (
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
