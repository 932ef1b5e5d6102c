package health

import (
	"context"
	"math"
	"sort"
	"time"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Scheduler is what waits in the scheduler (store/schedule.go).
type Scheduler struct {
	Lanes   []SchedLane    `json:"lanes"`
	Models  []SchedModel   `json:"models"`
	Tenants []SchedTenant  `json:"tenants"` // the busiest
	Blocked map[string]int `json:"blocked"` // by reason: model_capacity, session_order
	// handed counts the jobs handed out to workers so far (the drain rate);
	// running, the attempts running in the fleet.
	handed  int64
	running int
}

// SchedLane is a priority lane's backlog in the scheduler.
type SchedLane struct {
	Priority         string  `json:"priority"`
	Queued           int     `json:"queued"`
	Runnable         int     `json:"runnable"`
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
}

// SchedModel is a model's backlog in the scheduler.
type SchedModel struct {
	Model            string     `json:"model"`
	Queued           int        `json:"queued"`
	OldestAgeSeconds float64    `json:"oldest_age_seconds"`
	BlockedUntil     *time.Time `json:"blocked_until,omitempty"` // at its quota until then
}

// SchedTenant is a tenant's backlog in the scheduler.
type SchedTenant = store.SchedTenant

// readScheduler sums the scheduler's backlog per lane and model.
func (f *Fleet) readScheduler(ctx context.Context) (Scheduler, error) {
	out := Scheduler{Lanes: []SchedLane{}, Models: []SchedModel{}, Tenants: []SchedTenant{}, Blocked: map[string]int{"model_capacity": 0, "session_order": 0}}
	if f.scheduler == nil {
		return out, nil
	}
	b, waiting, err := f.scheduler(ctx)
	if err != nil {
		return out, err
	}
	now := time.Now()
	lanes, models := map[string]*SchedLane{}, map[string]*SchedModel{}
	for _, p := range tasks.Priorities {
		lanes[p] = &SchedLane{Priority: p}
	}
	for _, lm := range b.Lanes {
		l, ok := lanes[lm.Lane]
		if !ok {
			continue
		}
		age := now.Sub(lm.Oldest).Seconds()
		l.Queued += lm.Queued
		l.OldestAgeSeconds = max(l.OldestAgeSeconds, age)
		m := models[lm.Model]
		if m == nil {
			m = &SchedModel{Model: lm.Model}
			models[lm.Model] = m
		}
		m.Queued += lm.Queued
		m.OldestAgeSeconds = max(m.OldestAgeSeconds, age)
		if !lm.BlockedUntil.IsZero() {
			until := lm.BlockedUntil.UTC()
			m.BlockedUntil = &until
			out.Blocked["model_capacity"] += lm.Queued
		} else {
			l.Runnable += lm.Queued
		}
	}
	for _, p := range tasks.Priorities {
		l := lanes[p]
		l.OldestAgeSeconds = math.Round(l.OldestAgeSeconds*1000) / 1000
		out.Lanes = append(out.Lanes, *l)
	}
	for _, m := range models {
		m.OldestAgeSeconds = math.Round(m.OldestAgeSeconds*1000) / 1000
		out.Models = append(out.Models, *m)
	}
	sort.Slice(out.Models, func(i, j int) bool { return out.Models[i].Queued > out.Models[j].Queued })
	out.Tenants = append(out.Tenants, b.Tenants...)
	out.Blocked["session_order"] = waiting
	out.handed, out.running = b.Handed, b.Running
	return out, nil
}
