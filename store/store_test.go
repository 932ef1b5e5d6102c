package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/rkeys"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

func newStore(t *testing.T) *Store {
	rd := testkit.StartRedis(t)
	c := rd.Client()
	return New(c, Options{Retention: time.Hour, HistoryMaxMessages: 4, HistoryTTL: time.Hour})
}

func TestCreateIsOnceAndReplaysTheRecord(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	nj := NewJob{ID: "job_a", Tenant: "t", SessionID: "s", Queue: "q", BodyHash: "h1", CreatedAt: time.Now()}
	c, _, err := s.Create(ctx, nj)
	if err != nil || !c.New || c.Waiting {
		t.Fatalf("first create: %+v %v", c, err)
	}
	c, existing, err := s.Create(ctx, nj)
	if err != nil || c.New || existing.BodyHash != "h1" || existing.Status != StatusQueued {
		t.Fatalf("second create: %+v %+v %v", c, existing, err)
	}
	if head, _ := s.SessionHead(ctx, "t", "s"); head != "job_a" {
		t.Fatalf("session head %q", head)
	}
	if _, err := s.Delete(ctx, nj); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "job_a"); err != ErrNotFound {
		t.Fatalf("after delete: %v", err)
	}
	if head, _ := s.SessionHead(ctx, "t", "s"); head != "" {
		t.Fatalf("session head after delete %q", head)
	}
}

func TestFinishAppliesOnceAndBoundsHistory(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	for i, id := range []string{"job_1", "job_2", "job_3"} {
		if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if a, err := s.StartAttempt(ctx, id, "t", "s", id, "", true, time.Minute); err != nil || a.N != 1 || a.Head != "" {
			t.Fatalf("start attempt: %+v %v", a, err)
		}
		o := Outcome{Status: StatusSucceeded, Result: &Result{Content: "r"}, Usage: &Usage{1, 2},
			History: []Message{{Role: "user", Content: id}, {Role: "assistant", Content: "r" + id}}}
		for attempt := range 2 { // a retried Finish must not append twice
			f, err := s.Finish(ctx, id, "t", "s", 1, o)
			if first := f.First; err != nil || first != (attempt == 0) {
				t.Fatalf("finish %s attempt %d: %v %v", id, i, first, err)
			}
		}
		if a, _ := s.StartAttempt(ctx, id, "t", "s", id, "", false, time.Minute); a.N != 0 {
			t.Fatalf("a finished job was started again: %+v", a)
		}
	}
	h, err := s.History(ctx, "t", "s")
	if err != nil || len(h) != 4 || h[0].Content != "job_2" || h[3].Content != "rjob_3" {
		t.Fatalf("history %+v %v", h, err)
	}
	j, _ := s.Get(ctx, "job_3")
	if j.Status != StatusSucceeded || j.Result.Content != "r" || j.Usage.CompletionTokens != 2 || j.FinishedAt.IsZero() {
		t.Fatalf("record %+v", j)
	}
}

// A job whose session has an earlier unfinished job is told so and left
// untouched; once the earlier one finishes it starts, with the history.
// A session's second job waits for its turn without a task; a task that
// reaches a worker early changes nothing but the task the job waits under;
// the first job's finish hands the turn on: it returns the second job, with
// what its task needs, and brings its reconciler check forward.
func TestSessionTurnsAreHandedOn(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	// a session's job ids name its bucket (tasks.NewJobID)
	bucket := "job_" + rkeys.IDBucketChars(rkeys.SessionBucket("t", "s"))
	first, second := bucket+"first", bucket+"second"
	for _, id := range []string{first, second} {
		c, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now(), Payload: []byte("p-" + id)})
		if err != nil || !c.New || c.Waiting != (id == second) {
			t.Fatalf("create %s: %+v %v", id, c, err)
		}
	}
	member := rkeys.UnfinishedMember("t", "s", second)
	if at, _ := s.rdb.ZScore(ctx, rkeys.Unfinished(rkeys.Bucket(second)), member).Result(); at < float64(time.Now().Add(WaitingCheck/2).UnixMilli()) {
		t.Fatalf("a waiting job's check is due at %v, not far off", at)
	}
	a, err := s.StartAttempt(ctx, second, "t", "s", second, second+":fresh", true, time.Minute)
	if err != nil || a.Head != first || a.N != 0 {
		t.Fatalf("second before first: %+v %v", a, err)
	}
	if j, _ := s.Get(ctx, second); j.Status != StatusQueued || j.Attempts != 0 || j.Task != second+":fresh" {
		t.Fatalf("an early task: %+v", j)
	}
	if _, err := s.StartAttempt(ctx, first, "t", "s", first, "", true, time.Minute); err != nil {
		t.Fatal(err)
	}
	hist := []Message{{Role: "user", Content: "q"}, {Role: "assistant", Content: "a"}}
	f, err := s.Finish(ctx, first, "t", "s", 1, Outcome{Status: StatusSucceeded, Result: &Result{Content: "a"}, History: hist})
	done, next := f.First, f.Next
	if err != nil || !done || next == nil || next.ID != second || next.Task != second+":fresh" || next.Queue != "q" || next.Tenant != "t" || next.Session != "s" || next.Gone {
		t.Fatalf("finish: %v %+v %v", done, next, err)
	}
	if at, _ := s.rdb.ZScore(ctx, rkeys.Unfinished(rkeys.Bucket(second)), member).Result(); at > float64(time.Now().Add(HandOffCheck).UnixMilli()) {
		t.Fatalf("the next job's check was not brought forward: %v", at)
	}
	if f, _ := s.Finish(ctx, first, "t", "s", 0, Outcome{Status: StatusCanceled}); f.Next != nil {
		t.Fatalf("a second finish handed the turn on again: %+v", next)
	}
	a, err = s.StartAttempt(ctx, second, "t", "s", second+":fresh", "", true, time.Minute)
	if err != nil || a.N != 1 || a.Head != "" || len(a.History) != 2 || a.History[1].Content != "a" {
		t.Fatalf("second after first: %+v %v", a, err)
	}
	if _, err := s.StartAttempt(ctx, "job_missing", "t", "other", "job_missing", "", false, time.Minute); err != ErrNotFound {
		t.Fatalf("missing record: %v", err)
	}
}

// Holding, retrying or deferring a job extends its event log with its
// record: a job held past the retention keeps its log, and its sequence
// numbers go on instead of restarting at 1.
func TestHeldJobsKeepTheirEventLog(t *testing.T) {
	c := testkit.StartRedis(t).Client()
	s := New(c, Options{Retention: 10 * time.Second, HistoryMaxMessages: 4, HistoryTTL: time.Hour})
	ctx := context.Background()
	steps := map[string]func(id string, attempt int) error{
		"hold": func(id string, _ int) error { return s.Hold(ctx, id, "t", id, time.Now().Add(time.Hour)) },
		"retry": func(id string, n int) error {
			return s.MarkRetrying(ctx, id, "t", id, n, JobError{Code: "x", Message: "y"}, time.Now().Add(time.Hour), nil)
		},
		"defer": func(id string, n int) error { return s.MarkDeferred(ctx, id, "t", id, n, time.Now().Add(time.Hour)) },
	}
	for name, step := range steps {
		t.Run(name, func(t *testing.T) {
			id := "job_held_" + name
			if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			a, err := s.StartAttempt(ctx, id, "t", id, id, "", false, time.Minute)
			if err != nil || a.N != 1 {
				t.Fatalf("start %+v %v", a, err)
			}
			if _, err := s.AppendEvent(ctx, id, a.Fence, 0, TokenEvent{Delta: "x"}); err != nil {
				t.Fatal(err)
			}
			if err := step(id, a.Fence); err != nil {
				t.Fatal(err)
			}
			job, events := c.TTL(ctx, rkeys.Job(id)).Val(), c.TTL(ctx, rkeys.Events(id)).Val()
			if job < time.Hour || events < job-time.Second {
				t.Fatalf("record TTL %s, event log TTL %s", job, events)
			}
		})
	}
}

// Claiming an expired lease pushes it forward instead of removing it: a
// rescuer that claims a lease and then fails to take the job over (Redis
// away, the rescuer killed) leaves it to be claimed again after the claim
// period; taking the job over removes it.
func TestClaimedLeasesComeBackUntilTakenOver(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	id := "job_claimed"
	if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if a, err := s.StartAttempt(ctx, id, "t", id, id, "", false, time.Millisecond); err != nil || a.N != 1 {
		t.Fatalf("start %+v %v", a, err)
	}
	time.Sleep(5 * time.Millisecond)
	claim := func() []Lease {
		t.Helper()
		l, err := s.ClaimExpired(ctx, 10, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if l := claim(); len(l) != 1 || l[0].JobID != id || l[0].Fence != 1 {
		t.Fatalf("first claim %+v", l)
	}
	if l := claim(); len(l) != 0 {
		t.Fatalf("claimed twice within the claim period: %+v", l)
	}
	time.Sleep(60 * time.Millisecond) // the rescuer never took it over
	if l := claim(); len(l) != 1 {
		t.Fatalf("a claimed lease whose takeover never happened was not claimed again: %+v", l)
	}
	if ok, _, _, err := s.TakeOver(ctx, id, 1, id+":next"); err != nil || !ok {
		t.Fatalf("take over: %v %v", ok, err)
	}
	time.Sleep(60 * time.Millisecond)
	if l := claim(); len(l) != 0 {
		t.Fatalf("a lease taken over came back: %+v", l)
	}
}

// A deferral gives an attempt's number back (and a re-run restarts the
// count), so numbers repeat; the fence token does not: a stale attempt
// with the same number as the running one writes nothing.
func TestStaleAttemptWithTheSameNumberIsFencedOut(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	id := "job_fenced"
	if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	a1, err := s.StartAttempt(ctx, id, "t", id, id, "", false, time.Minute)
	if err != nil || a1.N != 1 {
		t.Fatalf("start %+v %v", a1, err)
	}
	if err := s.MarkDeferred(ctx, id, "t", id, a1.Fence, time.Now()); err != nil {
		t.Fatal(err)
	}
	a2, err := s.StartAttempt(ctx, id, "t", id, id, "", false, time.Minute)
	if err != nil || a2.N != a1.N || a2.Fence == a1.Fence {
		t.Fatalf("after a deferral: first %+v, second %+v (%v)", a1, a2, err)
	}
	if _, err := s.AppendEvent(ctx, id, a1.Fence, 0, TokenEvent{Delta: "stale"}); err != ErrSuperseded {
		t.Fatalf("a stale attempt's event: %v, want ErrSuperseded", err)
	}
	if f, err := s.Finish(ctx, id, "t", id, a1.Fence, Outcome{Status: StatusSucceeded, Result: &Result{Content: "stale"}, Usage: &Usage{}}); err != nil || f.First {
		t.Fatalf("a stale attempt finished the job: %v %v", f.First, err)
	}
	if f, err := s.Finish(ctx, id, "t", id, a2.Fence, Outcome{Status: StatusSucceeded, Result: &Result{Content: "fresh"}, Usage: &Usage{}}); err != nil || !f.First {
		t.Fatalf("the running attempt could not finish: %v %v", f.First, err)
	}
	if j, _ := s.Get(ctx, id); j.Result == nil || j.Result.Content != "fresh" {
		t.Fatalf("record %+v", j)
	}
}

// A job handed out twice runs once: a second start of the same task while
// the first attempt's lease is live finds nothing to run; once that lease
// has expired (its worker died) the same task takes the job over.
func TestASecondRunOfTheSameTaskWaitsForTheLease(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	id := "job_twice"
	if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	a1, err := s.StartAttempt(ctx, id, "t", id, id, "", false, 300*time.Millisecond)
	if err != nil || a1.N != 1 {
		t.Fatalf("start %+v %v", a1, err)
	}
	if a, err := s.StartAttempt(ctx, id, "t", id, id, "", false, time.Minute); err != nil || a.N != 0 {
		t.Fatalf("a second run while the lease is live: %+v %v, want nothing to run", a, err)
	}
	time.Sleep(400 * time.Millisecond) // the lease's end, by Redis's clock
	a2, err := s.StartAttempt(ctx, id, "t", id, id, "", false, time.Minute)
	if err != nil || a2.N != 2 || a2.Fence <= a1.Fence {
		t.Fatalf("the same task after the lease expired: %+v %v, want attempt 2", a2, err)
	}
}

// Leases read one clock, Redis's: a worker whose clock runs two leases
// behind (or ahead of) the rescuer's keeps the jobs it renews, and a lease
// it stops renewing still expires after a lease.
func TestLeasesIgnoreTheProcessClocks(t *testing.T) {
	c := testkit.StartRedis(t).Client()
	const lease = 300 * time.Millisecond
	opt := Options{Retention: time.Hour, HistoryMaxMessages: 4, HistoryTTL: time.Hour}
	rescuer := New(c, opt)
	ctx := context.Background()
	for name, offset := range map[string]time.Duration{"behind": -2 * lease, "ahead": 2 * lease} {
		t.Run(name, func(t *testing.T) {
			skewed := opt
			skewed.Clock = func() time.Time { return time.Now().Add(offset) }
			worker := New(c, skewed)
			id := "job_clock_" + name
			if _, _, err := worker.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			a, err := worker.StartAttempt(ctx, id, "t", id, id, "", false, lease)
			if err != nil || a.N != 1 {
				t.Fatalf("start %+v %v", a, err)
			}
			member := rkeys.LeaseMember(id, a.Fence)
			for range 6 { // two leases, renewed every third of one
				if l, err := rescuer.ClaimExpired(ctx, 10, time.Millisecond); err != nil || len(l) != 0 {
					t.Fatalf("a renewed lease was claimed: %+v %v", l, err)
				}
				time.Sleep(lease / 3)
				if err := worker.RenewLeases(ctx, []string{member}, lease); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(lease + 50*time.Millisecond) // the worker stops renewing
			if l, err := rescuer.ClaimExpired(ctx, 10, time.Minute); err != nil || len(l) != 1 || l[0].JobID != id {
				t.Fatalf("an unrenewed lease was not claimed after a lease: %+v %v", l, err)
			}
		})
	}
}

// The job cap is kept by the API; the worker that finishes a job may run
// without it (nothing told the operator both need it): the finished job still
// leaves its tenant's count, so the tenant is not locked out.
func TestFinishedJobsLeaveTheCountWhateverTheFinisherSettings(t *testing.T) {
	c := testkit.StartRedis(t).Client()
	api := New(c, Options{Retention: time.Hour, HistoryMaxMessages: 4, HistoryTTL: time.Hour, TenantMaxJobs: 1})
	worker := New(c, Options{Retention: time.Hour, HistoryMaxMessages: 4, HistoryTTL: time.Hour})
	ctx := context.Background()
	for i := range 3 {
		id := "job_capped_" + strconv.Itoa(i)
		if _, _, err := api.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
		if _, err := worker.Finish(ctx, id, "t", id, 0, Outcome{Status: StatusSucceeded, Result: &Result{Content: "ok"}, Usage: &Usage{}}); err != nil {
			t.Fatal(err)
		}
	}
}

// A job with webhooks enters its bucket's outbox in the script that ends it,
// once, and leaves it when its deliveries are enqueued; a sweep finds it only
// after OutboxDelay. A job without webhooks never enters it.
func TestFinishPutsAJobWithWebhooksInTheOutbox(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	for _, id := range []string{"job_hooked", "job_plain"} {
		nj := NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}
		if id == "job_hooked" {
			nj.Webhook = `{"kind":"job"}`
		}
		if _, _, err := s.Create(ctx, nj); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			f, err := s.Finish(ctx, id, "t", id, 0, Outcome{Status: StatusCanceled})
			if err != nil || f.Notify != (id == "job_hooked" && i == 0) {
				t.Fatalf("%s finish %d: %+v %v", id, i, f, err)
			}
		}
		n, _ := s.rdb.ZCard(ctx, rkeys.WebhookOutbox(rkeys.Bucket(id))).Result()
		if want := map[bool]int64{true: 1, false: 0}[id == "job_hooked"]; n != want {
			t.Fatalf("%s: outbox holds %d, want %d", id, n, want)
		}
	}
	if ids, err := s.ClaimWebhooks(ctx, 10, time.Minute); err != nil || len(ids) != 0 {
		t.Fatalf("claimed before the delay: %v %v", ids, err)
	}
	if err := s.WebhooksEnqueued(ctx, "job_hooked"); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.rdb.ZCard(ctx, rkeys.WebhookOutbox(rkeys.Bucket("job_hooked"))).Result(); n != 0 {
		t.Fatalf("the outbox still holds %d after the enqueue", n)
	}
	if j, _ := s.Get(ctx, "job_hooked"); j.Webhook != `{"kind":"job"}` {
		t.Fatalf("record's webhook %q", j.Webhook)
	}
	entry := func(state string, rank int) DeliveryEntry {
		return DeliveryEntry{Target: "wh_1", EventID: "evt_1", Rank: rank, JSON: []byte(`{"state":"` + state + `"}`)}
	}
	if err := s.RecordDelivery(ctx, "job_hooked", entry("delivered", 3)); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordDelivery(ctx, "job_gone", entry("delivered", 3)); err != nil {
		t.Fatal(err)
	}
	// A lower rank of the same event (a late pending) leaves the entry; a
	// re-run's event replaces it.
	if err := s.RecordDelivery(ctx, "job_hooked", entry("pending", 1)); err != nil {
		t.Fatal(err)
	}
	if j, _ := s.Get(ctx, "job_hooked"); j.Deliveries != `{"wh_1":{"state":"delivered"}}` {
		t.Fatalf("deliveries %q", j.Deliveries)
	}
	rerun := entry("pending", 1)
	rerun.EventID = "evt_2"
	if err := s.RecordDelivery(ctx, "job_hooked", rerun); err != nil {
		t.Fatal(err)
	}
	if j, _ := s.Get(ctx, "job_hooked"); j.Deliveries != `{"wh_1":{"state":"pending"}}` {
		t.Fatalf("deliveries after a re-run's event %q", j.Deliveries)
	}
	if _, err := s.Get(ctx, "job_gone"); err != ErrNotFound {
		t.Fatalf("recording a delivery recreated an expired record: %v", err)
	}
}

// A client that follows a job's tokens before it starts marks the record;
// every attempt of the job then reads the mark. Waking a job that is gone
// writes nothing.
func TestWakeMarksTheJobForItsAttempts(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if err := s.Wake(ctx, "job_gone"); err != nil {
		t.Fatal(err)
	}
	if n := s.rdb.Exists(ctx, rkeys.Job("job_gone")).Val(); n != 0 {
		t.Fatal("waking a job that does not exist wrote its record")
	}
	for _, follow := range []bool{false, true} {
		id := "job_w" + strconv.FormatBool(follow)
		if _, _, err := s.Create(ctx, NewJob{ID: id, Tenant: "t", SessionID: id, Queue: "q", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if follow {
			if err := s.Wake(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		a, err := s.StartAttempt(ctx, id, "t", id, id, "", false, time.Minute)
		if err != nil || a.N != 1 || a.Followed != follow {
			t.Fatalf("followed %v: attempt %+v %v", follow, a, err)
		}
	}
}
