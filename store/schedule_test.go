package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

var testLanes = []Lane{{"high", 6}, {"normal", 3}, {"low", 1}}

// schedStore is a store whose clock the test moves.
func schedStore(t *testing.T) (*Store, *atomic.Int64) {
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	s := New(testkit.StartRedis(t).Client(), Options{Retention: time.Hour, Clock: func() time.Time { return time.UnixMilli(now.Load()) }})
	return s, &now
}

func schedule(t *testing.T, s *Store, lane, tenant, model string, weight float64, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("%s-%s-%s-%d", lane, tenant, model, i)
		if err := s.Schedule(context.Background(), Scheduled{ID: id, Lane: lane, Tenant: tenant, Model: model, At: s.opt.Clock().Add(time.Duration(i)), Weight: weight}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func dispatch(t *testing.T, s *Store, n int) []Scheduled {
	t.Helper()
	got, _, _, err := s.Dispatch(context.Background(), n, testLanes)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// Tenants share by weight while both have work; a lone tenant gets every
// slot; a tenant that comes late starts at the lane's virtual time, not
// behind the backlog.
func TestSchedulerSharesByWeight(t *testing.T) {
	s, _ := schedStore(t)
	schedule(t, s, "normal", "acme", "m", 3, 60)
	first := dispatch(t, s, 8) // acme alone: all 8
	for _, j := range first {
		if j.Tenant != "acme" {
			t.Fatalf("a lone tenant did not get every slot: %+v", first)
		}
	}
	schedule(t, s, "normal", "cool", "m", 1, 60)
	count := map[string]int{}
	for range 32 {
		got := dispatch(t, s, 1)
		if len(got) != 1 {
			t.Fatalf("dispatch: %+v", got)
		}
		count[got[0].Tenant]++
	}
	// 3:1 within one job: cool comes in at the lane's virtual time, a
	// third of a job before acme's next turn.
	if count["acme"] < 23 || count["acme"] > 24 || count["acme"]+count["cool"] != 32 {
		t.Fatalf("weights 3:1 gave %v of 32", count)
	}
	// The order within a tenant is its submit order.
	if got := dispatch(t, s, 1); got[0].ID != fmt.Sprintf("normal-acme-m-%d", 8+count["acme"]) && got[0].ID != fmt.Sprintf("normal-cool-m-%d", count["cool"]) {
		t.Fatalf("next: %+v", got)
	}
	// Adding a job that is there already changes nothing.
	if err := s.Schedule(context.Background(), Scheduled{ID: "normal-cool-m-59", Lane: "normal", Tenant: "cool", Model: "m", Weight: 1}); err != nil {
		t.Fatal(err)
	}
	rest := dispatch(t, s, 1000)
	if len(rest) != 120-41 {
		t.Fatalf("%d jobs left, want %d", len(rest), 120-41)
	}
	if in, _ := s.IsScheduled(context.Background(), "normal-cool-m-59"); in {
		t.Fatal("a dispatched job is still listed")
	}
}

// A high job goes before a backlog of normal ones; low still gets its share.
func TestSchedulerLanes(t *testing.T) {
	s, _ := schedStore(t)
	schedule(t, s, "normal", "acme", "m", 1, 40)
	dispatch(t, s, 3)
	schedule(t, s, "high", "acme", "m", 1, 1)
	if got := dispatch(t, s, 1); got[0].Lane != "high" {
		t.Fatalf("the high job waited: %+v", got)
	}
	schedule(t, s, "high", "acme", "m2", 1, 30)
	schedule(t, s, "low", "beta", "m", 1, 30)
	lanes := map[string]int{}
	for _, j := range dispatch(t, s, 30) {
		lanes[j.Lane]++
	}
	if lanes["high"] != 18 || lanes["normal"] != 9 || lanes["low"] != 3 {
		t.Fatalf("lanes 6:3:1 gave %v of 30", lanes)
	}
}

// A model given back at its quota is held until its block ends, its jobs in
// order, while the same tenant's other model runs.
func TestSchedulerHoldsAModelAtQuota(t *testing.T) {
	s, now := schedStore(t)
	ctx := context.Background()
	x := schedule(t, s, "normal", "acme", "x", 1, 3)
	y := schedule(t, s, "normal", "acme", "y", 1, 2)
	got := dispatch(t, s, 1)
	if got[0].ID != x[0] {
		t.Fatalf("first: %+v", got)
	}
	until := time.UnixMilli(now.Load()).Add(time.Second)
	if err := s.GiveBack(ctx, Scheduled{ID: x[0], Lane: "normal", Tenant: "acme", Model: "x", At: time.UnixMilli(now.Load()), Weight: 1}, until, 0); err != nil {
		t.Fatal(err)
	}
	got, left, next, err := s.Dispatch(ctx, 10, testLanes)
	if err != nil || len(got) != 2 || got[0].ID != y[0] || got[1].ID != y[1] || !next.Equal(until) || left != 3 {
		t.Fatalf("while x is blocked: %+v, %d left, next %v %v", got, left, next, err)
	}
	b, err := s.SchedStatus(ctx, []string{"high", "normal", "low"}, 5)
	if err != nil || len(b.Lanes) != 1 || b.Lanes[0].Model != "x" || b.Lanes[0].Queued != 3 || !b.Lanes[0].BlockedUntil.Equal(until) ||
		len(b.Tenants) != 1 || b.Tenants[0].Queued != 3 {
		t.Fatalf("status: %+v %v", b, err)
	}
	// The block ends in probing: one job a window, in order.
	now.Add(time.Second.Milliseconds())
	if got = dispatch(t, s, 10); len(got) != 1 || got[0].ID != x[0] {
		t.Fatalf("the first probe: %+v", got)
	}
	if got = dispatch(t, s, 10); len(got) != 0 {
		t.Fatalf("a second job in the probe's window: %+v", got)
	}
	// The probe finds no capacity either: blocked again, probing starts over.
	until = time.UnixMilli(now.Load()).Add(time.Second)
	if err := s.GiveBack(ctx, Scheduled{ID: x[0], Lane: "normal", Tenant: "acme", Model: "x", At: time.UnixMilli(now.Load()), Weight: 1}, until, 0); err != nil {
		t.Fatal(err)
	}
	now.Add(probeWindow.Milliseconds())
	if got = dispatch(t, s, 10); len(got) != 0 {
		t.Fatalf("handed out while blocked again: %+v", got)
	}
	now.Add(time.Second.Milliseconds())
	if got = dispatch(t, s, 10); len(got) != 1 || got[0].ID != x[0] {
		t.Fatalf("the probe after the second block: %+v", got)
	}
	now.Add(probeWindow.Milliseconds())
	if got = dispatch(t, s, 10); len(got) != 1 || got[0].ID != x[1] {
		t.Fatalf("the second probe: %+v", got)
	}
	// Probes that find capacity (none given back) for probeWindows windows
	// in a row open the model: the rest at once.
	for i := range 6 {
		id := fmt.Sprintf("late-x-%d", i)
		if err := s.Schedule(ctx, Scheduled{ID: id, Lane: "normal", Tenant: "acme", Model: "x", At: time.UnixMilli(now.Load()), Weight: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for range probeWindows - 2 {
		now.Add(probeWindow.Milliseconds())
		if got = dispatch(t, s, 10); len(got) != 1 {
			t.Fatalf("a probe window handed out %+v", got)
		}
	}
	now.Add(probeWindow.Milliseconds())
	if got = dispatch(t, s, 10); len(got) != 5 { // x[2] and late-x-0 went as probes
		t.Fatalf("the model is still probed after %d quiet windows: %+v", probeWindows, got)
	}
	if b, _ := s.SchedStatus(ctx, []string{"high", "normal", "low"}, 5); len(b.Lanes) != 0 || len(b.Tenants) != 0 {
		t.Fatalf("status of an empty scheduler: %+v", b)
	}
}

// A canceled job leaves the scheduler at once: the counts drop and the
// tenant's next job moves up.
func TestSchedulerUnschedule(t *testing.T) {
	s, _ := schedStore(t)
	ctx := context.Background()
	ids := schedule(t, s, "normal", "acme", "m", 1, 3)
	other := schedule(t, s, "normal", "beta", "m", 1, 1)
	for _, id := range append([]string{ids[0], other[0]}, "not-there") {
		if err := s.Unschedule(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := s.SchedStatus(ctx, []string{"normal"}, 5); len(b.Lanes) != 1 || b.Lanes[0].Queued != 2 || len(b.Tenants) != 1 || b.Tenants[0].Queued != 2 {
		t.Fatalf("status: %+v", b)
	}
	got := dispatch(t, s, 10)
	if len(got) != 2 || got[0].ID != ids[1] || got[1].ID != ids[2] {
		t.Fatalf("after the cancels: %+v", got)
	}
}

// A round of n jobs hands out the jobs that n rounds of one would, in the
// same order: taking a tenant's run of jobs at once changes no decision.
// Random backlogs over three lanes, tenants of several weights and models,
// with jobs coming between rounds.
func TestSchedulerRoundEqualsOneAtATime(t *testing.T) {
	batched, _ := schedStore(t)
	single, _ := schedStore(t)
	for seed := range int64(12) {
		for _, s := range []*Store{batched, single} {
			if err := s.rdb.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		}
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		tenants := []string{"acme", "beta", "cool", "dune"}
		weights := map[string]float64{"acme": 3, "beta": 1, "cool": 2, "dune": 0.5}
		models := []string{"x", "y", "z"}
		next := 0
		for round := range 30 {
			for range rng.IntN(25) {
				tenant := tenants[rng.IntN(len(tenants))]
				j := Scheduled{ID: fmt.Sprintf("j%d", next), Lane: testLanes[rng.IntN(len(testLanes))].Name, Tenant: tenant,
					Model: models[rng.IntN(len(models))], At: batched.opt.Clock().Add(time.Duration(rng.IntN(5)) * time.Millisecond), Weight: weights[tenant]}
				next++
				for _, s := range []*Store{batched, single} {
					if err := s.Schedule(context.Background(), j); err != nil {
						t.Fatal(err)
					}
				}
			}
			n := 1 + rng.IntN(20)
			var got, want []string
			for _, j := range dispatch(t, batched, n) {
				got = append(got, j.ID)
			}
			for range n {
				for _, j := range dispatch(t, single, 1) {
					want = append(want, j.ID)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("seed %d round %d (n %d): a round handed out\n%v\none at a time\n%v", seed, round, n, got, want)
			}
		}
	}
}
