package webhooks

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

func TestPrivateAddressesAreRefused(t *testing.T) {
	for addr, private := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "172.16.0.1": true, "192.168.1.1": true, "169.254.169.254": true,
		"100.64.0.1": true, "0.0.0.0": true, "::1": true, "fd00:ec2::254": true, "fe80::1": true, "::ffff:127.0.0.1": true,
		"::ffff:10.0.0.1": true, "64:ff9b::a00:1": true, "224.0.0.1": true,
		"192.0.2.10": true, "198.51.100.7": true, "203.0.113.255": true, "2001:db8::1": true, "2001:db8:ffff::1": true,
		"::127.0.0.1": true, "::a00:1": true, "::": true,
		"192.0.3.1": false, "198.51.101.1": false, "203.0.114.1": false, "2001:db9::1": false, "::1:0:0:1": false,
		"93.184.216.34": false, "8.8.8.8": false, "2606:4700::1111": false, "172.32.0.1": false,
	} {
		if got := privateAddr(netip.MustParseAddr(addr)); got != private {
			t.Errorf("privateAddr(%s) = %v, want %v", addr, got, private)
		}
	}
	var refused *refusedError
	if err := guard("tcp", "127.0.0.1:443", nil); !errors.As(err, &refused) {
		t.Fatalf("guard let loopback through: %v", err)
	}
	if err := guard("tcp", "8.8.8.8:443", nil); err != nil {
		t.Fatalf("guard refused a public address: %v", err)
	}
}

// A zone (fe80::1%eth0) takes an address out of every netip.Prefix, and
// site-local fec0::/10 is as private as fc00::/7: the dial guard, which sees
// resolved addresses with their zones, refuses both.
func TestDialGuardRefusesZonedAndSiteLocalAddresses(t *testing.T) {
	for _, addr := range []string{"[fe80::1%eth0]:443", "[fe80::1%25eth0]:443", "[fd00::1%lo]:443", "[::1%lo]:443",
		"[ff02::1%eth0]:443", "[fec0::1]:443", "[fec0::1%eth0]:443", "[feff::1]:443"} {
		var refused *refusedError
		if err := guard("tcp", addr, nil); !errors.As(err, &refused) {
			t.Errorf("guard let %s through: %v", addr, err)
		}
	}
	if err := guard("tcp", "[2606:4700::1111]:443", nil); err != nil {
		t.Fatalf("guard refused a public IPv6 address: %v", err)
	}
}

func TestRetryDelaysGrowAndHonourRetryAfter(t *testing.T) {
	d := &Deliverer{opt: Options{RetryBase: time.Second, RetryFor: 24 * time.Hour}}
	for n, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		got := d.RetryDelay(n, errors.New("answered 500"), nil)
		if got < want*8/10 || got > want*12/10 {
			t.Errorf("retry %d: delay %s, want %s ±20 %%", n, got, want)
		}
	}
	if got := d.RetryDelay(40, errors.New("answered 500"), nil); got > maxDelay*12/10 {
		t.Errorf("delay after 40 retries %s, capped at %s", got, maxDelay)
	}
	ra := &retryAfterError{err: errors.New("answered 429"), after: 90 * time.Second}
	// A second more: asynq schedules to the second, up to a second early.
	if got := d.RetryDelay(0, ra, nil); got != 91*time.Second {
		t.Errorf("a Retry-After of 90s gave a delay of %s, want 91s", got)
	}
	// Longer than a backoff of about 4 s, less than it plus asynq's second.
	ra.after = 4 * time.Second
	if got := d.RetryDelay(2, ra, nil); got < 5*time.Second {
		t.Errorf("a Retry-After of 4s over a backoff of 4s ±20 %% gave a delay of %s", got)
	}
}

func TestEventBodyIsOpenAIsEnvelope(t *testing.T) {
	at := time.Date(2026, 11, 30, 1, 2, 3, 456, time.UTC)
	j := store.Job{ID: "job_abc", SessionID: "s1", Status: store.StatusSucceeded, FinishedAt: at,
		Result: &store.Result{Content: "hi"}, Usage: &store.Usage{PromptTokens: 1, CompletionTokens: 2}}
	b, err := body(j, Spec{Kind: KindResponse, ObjectID: "resp_abc"}, eventType(KindResponse, j.Status), false)
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	_ = json.Unmarshal(b, &ev)
	if ev["type"] != tasks.EventResponseCompleted || ev["object"] != "event" || ev["created_at"] != float64(at.Unix()) ||
		ev["data"].(map[string]any)["id"] != "resp_abc" || ev["id"] != eventID(j) {
		t.Fatalf("response event %s", b)
	}
	b, _ = body(j, Spec{Kind: KindJob}, eventType(KindJob, j.Status), true)
	_ = json.Unmarshal(b, &ev)
	data := ev["data"].(map[string]any)
	if ev["type"] != tasks.EventJobSucceeded || data["id"] != "job_abc" || data["session_id"] != "s1" || data["result"].(map[string]any)["content"] != "hi" {
		t.Fatalf("job event %s", b)
	}
	j.Result.Content = string(make([]byte, maxResult))
	b, _ = body(j, Spec{Kind: KindJob}, tasks.EventJobSucceeded, true)
	if len(b) > 1024 || !json.Valid(b) {
		t.Fatalf("an oversized result was included (%d bytes)", len(b))
	}
	if eventType(KindJob, store.StatusActive) != "" || eventType(KindResponse, store.StatusCanceled) != tasks.EventResponseCancelled {
		t.Fatal("event types")
	}
	// Another end of the same job (an operator's re-run) is another event.
	k := j
	k.FinishedAt = at.Add(time.Second)
	if eventID(k) == eventID(j) {
		t.Fatal("two ends of a job share an event id")
	}
}

func TestRegistryPicksEndpointsAndSecrets(t *testing.T) {
	r := NewRegistry([]Endpoint{
		{Tenant: "a", Secret: "whsec_first"},
		{Tenant: "a", URL: "https://a.example/hooks", Secret: "whsec_second", Events: []string{tasks.EventResponseCompleted}},
	})
	if !r.HasSecret("a") || r.HasSecret("b") || (*Registry)(nil).HasSecret("a") {
		t.Fatal("HasSecret")
	}
	if !r.Wants("a", KindResponse) || r.Wants("a", KindJob) || r.Wants("b", KindResponse) {
		t.Fatal("Wants: the endpoint takes response.completed only")
	}
	if s, _ := r.secret("a", "https://a.example/hooks"); s != "whsec_second" {
		t.Fatalf("the endpoint's own secret: %s", s)
	}
	if s, _ := r.secret("a", "https://job.example/x"); s != "whsec_first" {
		t.Fatalf("a per-job URL is signed with the tenant's first secret, got %s", s)
	}
}
