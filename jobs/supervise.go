package jobs

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// SuperviseOptions tune the rescuer and the reconciler that every worker runs.
// Neither has a leader: each claim is atomic in Redis, so any number of
// workers share the work.
type SuperviseOptions struct {
	// ReconcileEvery is how often the reconciler takes the unfinished jobs
	// whose check is due (default 2s).
	ReconcileEvery time.Duration
	Registerer     prometheus.Registerer
	Log            zerolog.Logger
}

type superviseMetrics struct {
	takeovers  prometheus.Counter
	reconciled *prometheus.CounterVec
}

// Supervise runs the rescuer and the reconciler until ctx ends.
//   - The rescuer takes over a job whose attempt's lease expired (its worker
//     died or stopped): the job runs again as a new attempt under a new task,
//     within the lease plus about a second, and the old attempt is fenced out.
//   - The reconciler walks the index of unfinished jobs, a bounded number at a
//     time: a record that is gone or finished but still holds its session's
//     turn releases it; a queued job whose task is missing or finished is
//     enqueued again; one asynq archived is failed.
func (m *Manager) Supervise(ctx context.Context, o SuperviseOptions) {
	if o.ReconcileEvery <= 0 {
		o.ReconcileEvery = 2 * time.Second
	}
	reg := o.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	sm := &superviseMetrics{
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatfleet_job_takeovers_total", Help: "Jobs taken over from an attempt whose lease expired (its worker died or stopped).",
		}),
		reconciled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatfleet_reconciled_jobs_total", Help: "Jobs the reconciler re-enqueued, failed or released from their session's turn, by action.",
		}, []string{"action"}),
	}
	// A second supervisor on the same registry (two managers in one process,
	// a restart in tests) counts into the same series instead of panicking.
	sm.takeovers = registered(reg, sm.takeovers)
	sm.reconciled = registered(reg, sm.reconciled)
	for _, a := range []string{actionRequeued, actionFailed, actionReleased} {
		sm.reconciled.WithLabelValues(a)
	}
	m.rescueMu.Lock()
	m.rescued = time.Now() // the gap to the first round counts too
	m.rescueMu.Unlock()
	// The rescuer looks for expired leases every fifth of a lease (at most every second).
	lease := m.opt.Lease
	go m.loop(ctx, min(max(lease/5, 100*time.Millisecond), time.Second), func() { m.rescue(ctx, sm, lease, o.Log) })
	go m.loop(ctx, o.ReconcileEvery, func() { m.reconcileDue(ctx, sm, o.Log) })
	if len(m.opt.Budgets) > 0 {
		go m.loop(ctx, o.ReconcileEvery, func() { m.sweepSettlements(ctx, o.Log) })
	}
}

// sweepSettlements settles the budget reservations of jobs whose ender did
// not (it died, or Redis failed it in between).
func (m *Manager) sweepSettlements(ctx context.Context, log zerolog.Logger) {
	ids, err := m.st.ClaimSettlements(ctx, 100, time.Minute)
	if err != nil {
		log.Warn().Err(err).Msg("could not claim budget settlements")
	}
	for _, id := range ids {
		m.settle(log.WithContext(ctx), id)
	}
}

// registered registers c, or returns the collector registered before it
// under the same name.
func registered[T prometheus.Collector](reg prometheus.Registerer, c T) T {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing
			}
		}
		panic(err) // two different metrics under one name: a programming error
	}
	return c
}

func (m *Manager) loop(ctx context.Context, every time.Duration, step func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			step()
		}
	}
}

// rescue takes over the jobs whose leases expired.
func (m *Manager) rescue(ctx context.Context, sm *superviseMetrics, lease time.Duration, log zerolog.Logger) {
	// A claim lasts a lease: a rescuer that cannot take the job over
	// (Redis away, the rescuer itself dying) leaves it to the next claim.
	m.rescueMu.Lock() // one round at a time, should a manager be supervised twice
	defer m.rescueMu.Unlock()
	start := time.Now()
	if m.rescued.IsZero() {
		m.rescued = start
	}
	expired, err := m.st.ClaimExpired(ctx, 100, lease)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn().Err(err).Msg("rescuer could not read the leases")
		}
		return
	}
	// A lease that expired while Redis (or this process) stood still says
	// nothing about its owner: no owner could renew either. After such a gap
	// the owners get a lease of working Redis to renew in; the leases claimed
	// meanwhile are not taken over, and come back after the claim unless
	// renewed.
	now := time.Now()
	if now.Sub(m.rescued) > lease/2 || now.Sub(start) > lease/2 {
		m.grace = now.Add(lease)
		log.Warn().Dur("gap", now.Sub(m.rescued)).Dur("call", now.Sub(start)).Msg("leases not trusted for a lease: Redis or this process stalled")
	}
	m.rescued = now
	if now.Before(m.grace) {
		return
	}
	for _, l := range expired {
		task := tasks.RetryTaskID(l.JobID)
		ok, payload, queue, err := m.st.TakeOver(ctx, l.JobID, l.Fence, task)
		if err != nil || !ok {
			continue // the attempt ended anyway, or Redis is away (the reconciler comes back to it)
		}
		jl := log.With().Str("job_id", l.JobID).Int("fence", l.Fence).Logger()
		if len(payload) == 0 {
			jl.Warn().Msg("job taken over but its payload is gone; the reconciler fails it")
			continue
		}
		if err := m.enqueue(ctx, payload, task, queue); err != nil {
			jl.Warn().Err(err).Msg("job taken over but not enqueued; the reconciler enqueues it")
			continue
		}
		sm.takeovers.Inc()
		jl.Info().Str("task", task).Msg("job taken over: its attempt's lease expired")
	}
}

// reconcileDue checks the unfinished jobs whose check is due.
func (m *Manager) reconcileDue(ctx context.Context, sm *superviseMetrics, log zerolog.Logger) {
	due, err := m.st.ClaimDue(ctx, 100, 30*time.Second)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn().Err(err).Msg("reconciler could not read the index")
		}
		return
	}
	for _, u := range due {
		jl := log.With().Str("job_id", u.ID).Str("session_id", u.SessionID).Str("tenant", u.Tenant).Logger()
		j, err := m.st.Get(ctx, u.ID)
		if errors.Is(err, store.ErrNotFound) || (err == nil && store.Terminal(j.Status)) {
			held, next, ferr := m.st.Forget(ctx, u)
			if ferr == nil && held {
				sm.reconciled.WithLabelValues(actionReleased).Inc()
				jl.Warn().Msg("reconciler released the session's turn of a job whose record is gone or finished")
			}
			m.dispatch(jl.WithContext(ctx), next)
			continue
		}
		if err != nil {
			continue
		}
		action, err := m.reconcile(jl.WithContext(ctx), j)
		if err != nil {
			jl.Warn().Err(err).Msg("reconciler could not check the job")
		}
		if action == actionWaiting {
			continue // its check was moved with the look at its turn
		}
		if action != "" {
			sm.reconciled.WithLabelValues(action).Inc()
			jl.Warn().Str("action", action).Str("status", j.Status).Msg("reconciler repaired a job")
		}
		// Young jobs are looked at often, old ones less: the cost stays
		// bounded however long the backlog.
		next := min(max(time.Since(j.CreatedAt)/4, 5*time.Second), time.Minute)
		_ = m.st.CheckAt(ctx, u, time.Now().Add(next))
	}
}
