package jobs

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Who runs next is decided by the scheduler (store/schedule.go), not by
// asynq's FIFO: a job whose session turn has come waits there, holding no
// worker slot, and becomes an asynq task only when a worker has a free slot,
// its model has capacity, and its lane and tenant are due by weight. asynq
// stays the transport to the workers; its ready queue stays about as long as
// the fleet's free slots, so the decisions are made late.

// lanes are the priorities in the order they are served, with their shares
// while several have work (high 6, normal 3, low 1).
var lanes = func() []store.Lane {
	var out []store.Lane
	for _, p := range tasks.Priorities {
		out = append(out, store.Lane{Name: p, Weight: tasks.PriorityWeight(p)})
	}
	return out
}()

// weight is a tenant's share of the fleet while several tenants have work.
func (m *Manager) weight(tenant string) float64 {
	if w, ok := m.opt.TenantWeights[tenant]; ok && w > 0 {
		return w
	}
	return 1
}

// modelOf is the model a job is scheduled under: the one it asks for, or the
// default's name.
func (m *Manager) modelOf(model string) string {
	if model != "" {
		return model
	}
	return m.defaultModel()
}

// schedule hands a job whose turn has come to the scheduler.
func (m *Manager) schedule(ctx context.Context, id, tenant, session, queue, model string, created time.Time) error {
	return m.st.Schedule(ctx, *m.scheduled(id, tenant, session, queue, model, created))
}

// scheduled is a job's place in the scheduler.
func (m *Manager) scheduled(id, tenant, session, queue, model string, created time.Time) *store.Scheduled {
	return &store.Scheduled{ID: id, Lane: tasks.PriorityOfQueue(queue), Tenant: tenant, Session: session,
		Model: m.modelOf(model), At: created, Weight: m.weight(tenant)}
}

// DispatchOptions configures a worker's dispatcher.
type DispatchOptions struct {
	// Free is how many more jobs this worker can run now.
	Free func() int
	// Pickup is how long a task this dispatcher handed out may take to be
	// picked up (about one poll of an idle processor); until then, or until
	// this worker starts a task, it counts against the free slots, and then
	// the dispatcher looks at its free slots again. Default 40 ms.
	Pickup time.Duration
	// Batch is how many free slots a round waits for, at most Linger,
	// while the scheduler has a backlog: one round a freed slot would cost
	// a dispatch script a job on a busy worker. Default 1 (no wait).
	Batch  int
	Linger time.Duration
	// Run, when set, runs a job handed out here in this process at once
	// instead of through asynq's queue (see orchestration/direct.go); false
	// when it cannot take it now, and the job's task is enqueued.
	Run func(task, queue string, payload []byte) bool
	Log zerolog.Logger
}

// Dispatcher hands the scheduler's jobs to asynq as this worker's slots free
// up. It wakes on a nudge from the scheduler (a job came), on Poke (a slot
// freed here), when a model's block ends, and once a second in case a nudge
// was lost; it costs nothing per waiting job.
type Dispatcher struct {
	m    *Manager
	o    DispatchOptions
	poke chan struct{}

	// enqueues bounds a round's enqueues under way at once.
	enqueues chan struct{}

	// backlog says the last round left jobs in the scheduler; waitSince is
	// when the round that waits for a batch first put it off. Run's only.
	backlog   bool
	waitSince time.Time

	mu sync.Mutex
	// outstanding are the times of the tasks handed out here and not yet
	// known to be picked up, oldest first: asynq's ready queue, as far as
	// this worker's slots are concerned, without asking Redis.
	outstanding []time.Time
}

// NewDispatcher returns a dispatcher; Run starts it.
func (m *Manager) NewDispatcher(o DispatchOptions) *Dispatcher {
	if o.Pickup <= 0 {
		o.Pickup = 40 * time.Millisecond
	}
	o.Batch = max(o.Batch, 1)
	if o.Linger <= 0 {
		o.Linger = 20 * time.Millisecond
	}
	return &Dispatcher{m: m, o: o, poke: make(chan struct{}, 1), enqueues: make(chan struct{}, handOutParallel)}
}

// Started says this worker started a task: one handed out is picked up.
func (d *Dispatcher) Started() {
	d.mu.Lock()
	if len(d.outstanding) > 0 {
		d.outstanding = d.outstanding[1:]
	}
	d.mu.Unlock()
}

// pending counts the tasks handed out here that may still wait for a slot.
func (d *Dispatcher) pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	cut := time.Now().Add(-d.o.Pickup)
	i := 0
	for i < len(d.outstanding) && d.outstanding[i].Before(cut) {
		i++
	}
	d.outstanding = d.outstanding[i:]
	return len(d.outstanding)
}

// pickupDue is when the oldest task handed out here counts as picked up.
func (d *Dispatcher) pickupDue() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.outstanding) == 0 {
		return time.Time{}
	}
	return d.outstanding[0].Add(d.o.Pickup)
}

func (d *Dispatcher) handedOut(n int) {
	d.mu.Lock()
	now := time.Now()
	for range n {
		d.outstanding = append(d.outstanding, now)
	}
	d.mu.Unlock()
}

// Poke says a slot freed here.
func (d *Dispatcher) Poke() {
	select {
	case d.poke <- struct{}{}:
	default:
	}
}

// dispatchEvery is the dispatcher's round when nothing wakes it: a lost
// nudge (the subscription reconnecting) delays a job by at most this.
const dispatchEvery = time.Second

// Run dispatches until ctx ends; a round under way finishes its enqueues.
func (d *Dispatcher) Run(ctx context.Context) {
	ps := d.m.st.ListenNudges(ctx)
	defer ps.Close()
	nudges := ps.Channel()
	tick := time.NewTicker(dispatchEvery)
	defer tick.Stop()
	unblock := time.NewTimer(time.Hour)
	defer unblock.Stop()
	batched := time.NewTimer(time.Hour)
	defer batched.Stop()
	for {
		// A round at once: a worker that starts finds the backlog that
		// came before it subscribed.
		next, wait := d.round(ctx)
		// Free slots held for tasks handed out here are looked at again
		// when the oldest of those is past its pickup: another worker may
		// have taken it, and no slot of this one would free up to say so.
		if due := d.pickupDue(); !due.IsZero() && d.o.Free() > 0 && (wait.IsZero() || due.Before(wait)) {
			wait = due
		}
		if !next.IsZero() {
			unblock.Reset(max(time.Until(next), time.Millisecond))
		}
		if !wait.IsZero() {
			batched.Reset(max(time.Until(wait), 0))
		}
		for due := false; !due; {
			select {
			case <-ctx.Done():
				return
			case <-d.poke:
				// A freed slot matters only while jobs wait: without a
				// backlog, new work comes with a nudge.
				due = d.backlog
			case <-nudges:
				due = true
			case <-tick.C:
				due = true
			case <-unblock.C:
				due = true
			case <-batched.C:
				due = true
			}
		}
	}
}

// round hands out as many jobs as this worker has free slots beyond the
// tasks it handed out that wait to be picked up, and returns when the
// earliest model block ends. While the scheduler has a backlog, it waits
// for a batch of free slots up to the linger, and returns when that ends.
func (d *Dispatcher) round(ctx context.Context) (next, wait time.Time) {
	n := d.o.Free() - d.pending()
	if n <= 0 {
		// Work may have come meanwhile: the next freed slot asks.
		d.backlog, d.waitSince = true, time.Time{}
		return time.Time{}, time.Time{}
	}
	if d.backlog && n < d.o.Batch {
		now := time.Now()
		if d.waitSince.IsZero() {
			d.waitSince = now
		}
		if until := d.waitSince.Add(d.o.Linger); now.Before(until) {
			return time.Time{}, until
		}
	}
	d.waitSince = time.Time{}
	got, left, next, err := d.m.st.Dispatch(ctx, n, lanes)
	if err != nil {
		d.o.Log.Warn().Err(err).Msg("could not dispatch")
		return time.Time{}, time.Time{}
	}
	// Jobs held back (a model at its quota) count: another worker's
	// give-back or probe may make them runnable before this worker's next
	// nudge, and its freed slots must ask for them.
	d.backlog = left > 0
	if len(got) > 0 {
		d.handedOut(len(got))
		// The round waits for its enqueues: handing a backlog out faster
		// than the workers start it overfeeds a model at its quota (more
		// attempts that find no capacity and give their job back; a burst
		// over two deployments took 1.4-1.6x the quota's time against 1.2-1.3x).
		// The jobs are out of the scheduler now, so their enqueues outlive
		// a shutdown's cancel (bounded by handOutTimeout).
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), handOutTimeout)
		defer cancel()
		d.m.handOut(hctx, got, d.enqueues, d.o.Run, d.o.Log)
	}
	return next, time.Time{}
}

// handOutTimeout bounds a round's enqueues; a job whose enqueue did not
// happen by then goes back to the scheduler, or to the reconciler.
const handOutTimeout = 5 * time.Second

// handOut enqueues the tasks of jobs the scheduler handed out. A job that
// ended meanwhile (canceled) is dropped; one whose record is gone hands its
// session's turn on; one whose enqueue fails goes back to the scheduler, or,
// if that fails too, the reconciler finds it (queued, neither scheduled nor
// with a task) and schedules it again.
// sem bounds the enqueues under way at once; run, when set, runs a job here
// instead (DispatchOptions.Run).
func (m *Manager) handOut(ctx context.Context, got []store.Scheduled, sem chan struct{}, run func(task, queue string, payload []byte) bool, log zerolog.Logger) {
	ids := make([]string, len(got))
	for i, s := range got {
		ids[i] = s.ID
	}
	recs, err := m.st.ToRun(ctx, ids)
	if err != nil {
		log.Warn().Err(err).Int("jobs", len(got)).Msg("could not read the jobs handed out; the reconciler will schedule them again")
		return
	}
	if run != nil {
		// What runs here needs no task; the rest is enqueued as before. A
		// job of a model that has been at its quota lately goes through
		// asynq, whose pickup spaces the starts: started at once on every
		// free slot, bursts at the quota took 1.3-1.5x the quota's time in
		// 4 runs of 4 (against 1.2-1.3x).
		var left []store.Scheduled
		var leftRecs []store.ToRun
		for i, r := range recs {
			if !got[i].Paced && r.Status == store.StatusQueued && len(r.Payload) > 0 && run(r.Task, r.Queue, r.Payload) {
				continue
			}
			left, leftRecs = append(left, got[i]), append(leftRecs, r)
		}
		got, recs = left, leftRecs
	}
	// The enqueues run side by side: one after another, a round of many
	// jobs (a worker starting with 100 free slots) would wait out as many
	// round trips before the last one could start.
	var wg sync.WaitGroup
	for i, r := range recs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			m.handOutOne(ctx, got[i], r, log)
		}()
	}
	wg.Wait()
}

// handOutParallel bounds a worker's enqueues under way at once.
const handOutParallel = 16

func (m *Manager) handOutOne(ctx context.Context, s store.Scheduled, r store.ToRun, log zerolog.Logger) {
	if r.Status == "" {
		next, err := m.st.Release(ctx, s.Tenant, s.Session, s.ID)
		if err != nil {
			log.Warn().Err(err).Str("next_job_id", r.ID).Msg("could not release the turn of a job whose record is gone; the reconciler will")
		}
		m.dispatch(ctx, next)
		return
	}
	if r.Status != store.StatusQueued || len(r.Payload) == 0 {
		return
	}
	if err := m.enqueueTask(ctx, r.ID, r.Task, r.Queue, r.Payload); err != nil {
		if serr := m.st.Schedule(ctx, store.Scheduled{ID: s.ID, Lane: s.Lane, Tenant: s.Tenant, Session: s.Session, Model: s.Model,
			At: r.CreatedAt, Weight: m.weight(s.Tenant)}); serr != nil {
			log.Warn().Err(errors.Join(err, serr)).Str("next_job_id", r.ID).Msg("could not enqueue a job handed out; the reconciler will")
		}
	}
}

// Backlog reads what waits in the scheduler (the `top` busiest tenants), how
// many jobs wait for their session's turn, and how many attempts run.
func (m *Manager) Backlog(ctx context.Context, top int) (store.SchedBacklog, int, error) {
	b, err := m.st.SchedStatus(ctx, tasks.Priorities, top)
	if err != nil {
		return b, 0, err
	}
	waiting, err := m.st.WaitingForTurn(ctx)
	if err != nil {
		return b, 0, err
	}
	b.Running, err = m.st.Running(ctx)
	return b, waiting, err
}
