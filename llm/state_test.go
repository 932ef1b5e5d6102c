package llm

import (
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/sony/gobreaker/v2"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// DeploymentStates reads what the limiter scripts left in a real Redis:
// calls in flight (an expired lease no longer counts), the request window,
// the tokens ahead of the tpm rate, a 429's pause and lowered rate (the same
// rate the rpm_effective gauge shows), a learned concurrency limit, the
// reason a call waited, the breaker, and nothing for an unguarded sim.
func TestDeploymentStates(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	ctx := context.Background()
	specs := []Spec{
		{ID: "alpha-east", Public: "alpha", Kind: "openai", Model: "gpt-4o", Limits: Limits{RPM: 120, Concurrency: 3}},
		{ID: "alpha-west", Public: "alpha", Kind: "openai", Model: "gpt-4o", Limits: Limits{TPM: 60000}},
		{ID: "beta-1", Public: "beta", Kind: "anthropic", Model: "claude-haiku-4-5"},
		{ID: "gamma-1", Public: "gamma", Kind: "sim"},
	}
	const margin = 0.05
	m := NewMetrics(nil, specs)
	mk := func(i int, lease time.Duration) *capacity {
		return newCapacity(specs[i].ID, rdb, specs[i].Limits, CapacitySettings{Margin: margin, Lease: lease}, m, zerolog.New(io.Discard))
	}
	east, west, beta := mk(0, 0), mk(1, 0), mk(2, 300*time.Millisecond)

	// east: the window's two calls (120 rpm: two a second) are taken and
	// held; a third waits for the window (at_limit rpm).
	e1, _ := take(t, east, 1, false, 0)
	e2, _ := take(t, east, 1, false, 0)
	if e1 == nil || e2 == nil {
		t.Fatal("east's two calls of the window were refused")
	}
	if _, ce := take(t, east, 1, false, 0); ce == nil || ce.Reason != "rpm" {
		t.Fatalf("a third call in east's window: %v", ce)
	}
	// west: one call of 5700 tokens at 57000 tpm (60000 less 5 %) is 6 s
	// of the rate ahead.
	w1, _ := take(t, west, 5700, false, 0)
	// beta: adaptive (no limits): the learned limit starts at 16.
	b1, _ := take(t, beta, 1, false, 0)
	if w1 == nil || b1 == nil {
		t.Fatal("west or beta refused a call")
	}
	// east's breaker is open for everyone.
	raw, _ := json.Marshal(gobreaker.SharedState{State: gobreaker.StateOpen, Expiry: time.Now().Add(time.Minute)})
	if err := rdb.Set(ctx, rkeys.Breaker(sharedStateName("alpha-east")), raw, 0).Err(); err != nil {
		t.Fatal(err)
	}

	got, err := DeploymentStates(ctx, rdb, specs, margin)
	if err != nil || len(got) != 4 {
		t.Fatalf("DeploymentStates: %+v %v", got, err)
	}
	e := got[0]
	if e.ID != "alpha-east" || e.Model != "alpha" || e.Provider != "openai" || e.Breaker != "open" || !e.Limited ||
		e.Limits != (StateLimits{RPM: 120, Concurrency: 3}) || e.InFlight != 2 || e.ConcurrencyLimit != 3 ||
		e.AtLimit != "rpm" || e.RPMEffective != 114 || e.PausedMS != 0 || e.TokensAhead != 0 {
		t.Fatalf("east: %+v", e)
	}
	// The window of 2 calls per 2×60000/114 ms holds both.
	if e.Window == nil || *e.Window != (RequestWindow{Requests: 2, Allowed: 2, Millis: 1052}) {
		t.Fatalf("east's window: %+v", e.Window)
	}
	w := got[1]
	if w.Breaker != "closed" || w.InFlight != 1 || w.Window != nil || w.RPMEffective != 0 || w.ConcurrencyLimit != 0 ||
		w.TokensAhead < 5500 || w.TokensAhead > 5700 || w.AtLimit != "" {
		t.Fatalf("west: %+v (tokens ahead: 5700 less what the time since paid back)", w)
	}
	b := got[2]
	if b.Model != "beta" || b.Provider != "anthropic" || !b.Limited || b.InFlight != 1 || b.ConcurrencyLimit != 16 {
		t.Fatalf("beta: %+v", b)
	}
	g := got[3]
	if g.Model != "gamma" || g.Limited || g.InFlight != 0 || g.ConcurrencyLimit != 0 || g.Breaker != "closed" {
		t.Fatalf("gamma (sim, no limits): %+v", g)
	}

	// The queue status advice names the model and its deployment.
	sat, err := Saturated(ctx, rdb, specs)
	if err != nil || len(sat) != 1 || sat[0] != "model alpha's deployment alpha-east is at its limit of 120 requests per minute" {
		t.Fatalf("Saturated: %q %v", sat, err)
	}

	// A 429 on east: the fleet pauses 2 s and keeps to a fifth less
	// (114 × 0.8 = 91), which the gauge shows too; one call ends.
	e1.rateLimited(ctx, 2*time.Second)
	e2.release(ctx, 0, true) // a success after the 429 raises it by a fiftieth of the ceiling: 91 + 2.28
	// beta's worker dies holding its slot: the lease runs out.
	b1.stop()
	time.Sleep(400 * time.Millisecond)
	got, err = DeploymentStates(ctx, rdb, specs, margin)
	if err != nil {
		t.Fatal(err)
	}
	e = got[0]
	gauge := int(testutil.ToFloat64(m.limit.WithLabelValues("alpha-east", "rpm_effective")))
	if e.InFlight != 0 || e.RPMEffective != 93 || gauge != e.RPMEffective || e.PausedMS <= 1000 || e.PausedMS > 2000 {
		t.Fatalf("east after a 429: %+v (gauge %d)", e, gauge)
	}
	// The lowered rate stretches the window: 2 calls per 2×60000/93.48 ms.
	if e.Window == nil || e.Window.Millis != 1283 {
		t.Fatalf("east's window after a 429: %+v", e.Window)
	}
	if got[2].InFlight != 0 {
		t.Fatalf("beta's expired lease still counts: %+v", got[2])
	}

	// The variables' chain: no public name, the configured model.
	legacy, err := DeploymentStates(ctx, rdb, []Spec{{Kind: "openai", Model: "gpt-4o-mini"}}, margin)
	if err != nil || len(legacy) != 1 || legacy[0].ID != "openai" || legacy[0].Model != "gpt-4o-mini" {
		t.Fatalf("legacy: %+v %v", legacy, err)
	}
}
