package webhooks

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// A job that ended with webhooks while its process died before enqueueing
// them (Finish without Notify) is in the outbox; the sweep enqueues its
// deliveries once store.OutboxDelay has passed, one task per receiver, and
// enqueueing again adds none.
func TestSweepEnqueuesWhatAFinishLeftInTheOutbox(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	st := store.New(rdb, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
	reg := NewRegistry([]Endpoint{
		{Tenant: "t", URL: "https://a.example/hooks", Secret: "whsec_x"},
		{Tenant: "t", URL: "https://b.example/hooks", Secret: "whsec_y", Events: []string{tasks.EventJobFailed}},
	})
	ctx := context.Background()
	nj := store.NewJob{ID: "job_swept", Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now(),
		Webhook: Spec{Kind: KindJob, URL: "https://own.example/x"}.Encode()}
	if _, _, err := st.Create(ctx, nj); err != nil {
		t.Fatal(err)
	}
	f, err := st.Finish(ctx, nj.ID, "t", "s", 0, store.Outcome{Status: store.StatusCanceled})
	if err != nil || !f.Notify {
		t.Fatalf("finish: %+v %v", f, err)
	}
	q := asynq.NewClientFromRedisClient(rdb)
	insp := asynq.NewInspectorFromRedisClient(rdb)
	jm := jobs.New(st, q, insp, jobs.Options{})
	sweepCtx, stop := context.WithCancel(ctx)
	defer stop()
	go NewOutbox(st.Reader(), jm, q, reg).Sweep(sweepCtx, 100*time.Millisecond, zerolog.Nop())

	pending := func() []*asynq.TaskInfo {
		list, _ := insp.ListPendingTasks(tasks.QueueWebhooks)
		return list
	}
	time.Sleep(store.OutboxDelay - 2*time.Second)
	if n := len(pending()); n != 0 {
		t.Fatalf("%d deliveries enqueued before the outbox delay", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(pending()) < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	list := pending()
	// job.canceled goes to a.example (all events) and the job's own URL; b
	// takes job.failed only.
	urls := map[string]bool{}
	for _, ti := range list {
		p, err := tasks.DecodeWebhook(ti.Payload)
		if err != nil || p.Type != tasks.EventJobCanceled || p.JobID != nj.ID {
			t.Fatalf("delivery %+v %v", p, err)
		}
		urls[p.URL] = true
	}
	if len(list) != 2 || !urls["https://a.example/hooks"] || !urls["https://own.example/x"] {
		t.Fatalf("deliveries to %v, want a.example and the job's own URL", urls)
	}
	if err := NewOutbox(st.Reader(), jm, q, reg).Flush(ctx, nj.ID); err != nil {
		t.Fatal(err)
	}
	if n := len(pending()); n != 2 {
		t.Fatalf("a second flush left %d deliveries, want the same 2", n)
	}
	j, _ := st.Get(ctx, nj.ID)
	if d := Deliveries(j); len(d) != 2 || d[0].State != StatePending {
		t.Fatalf("deliveries on the record: %+v", d)
	}
}

// A delivery can end before the Flush that enqueued it records pending: the
// record keeps delivered. States move only forward (pending → retrying → an
// end); an end gives way only to another end, an operator's re-delivery.
func TestDeliveryStateOnlyMovesForward(t *testing.T) {
	rdb := testkit.StartRedis(t).Client()
	st := store.New(rdb, store.Options{Retention: time.Hour, HistoryMaxMessages: 10, HistoryTTL: time.Hour})
	const url = "https://a.example/hooks"
	reg := NewRegistry([]Endpoint{{Tenant: "t", URL: url, Secret: "whsec_x"}})
	ctx := context.Background()
	nj := store.NewJob{ID: "job_forward", Tenant: "t", SessionID: "s", Queue: "q", CreatedAt: time.Now(),
		Webhook: Spec{Kind: KindJob}.Encode()}
	if _, _, err := st.Create(ctx, nj); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Finish(ctx, nj.ID, "t", "s", 0, store.Outcome{Status: store.StatusCanceled}); err != nil {
		t.Fatal(err)
	}
	j, err := st.Get(ctx, nj.ID)
	if err != nil {
		t.Fatal(err)
	}
	q := asynq.NewClientFromRedisClient(rdb)
	jm := jobs.New(st, q, asynq.NewInspectorFromRedisClient(rdb), jobs.Options{})
	// The delivery Flush enqueues, as a worker that ran it at once records it.
	p := tasks.WebhookPayload{ID: eventID(j), Type: tasks.EventJobCanceled, Tenant: "t", JobID: nj.ID, URL: url, Target: target(url)}
	state := func() Delivery {
		t.Helper()
		j, _ := st.Get(ctx, nj.ID)
		d := Deliveries(j)
		if len(d) != 1 {
			t.Fatalf("deliveries on the record: %+v", d)
		}
		return d[0]
	}
	if err := record(ctx, jm, p, Delivery{State: StateDelivered, Attempts: 1, StatusCode: 200}); err != nil {
		t.Fatal(err)
	}
	if err := NewOutbox(st.Reader(), jm, q, reg).Flush(ctx, nj.ID); err != nil {
		t.Fatal(err)
	}
	if d := state(); d.State != StateDelivered || d.StatusCode != 200 || d.EventID != p.ID {
		t.Fatalf("after the Flush that enqueued it, the delivery is %+v, want delivered", d)
	}
	if err := record(ctx, jm, p, Delivery{State: StateRetrying, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	if d := state(); d.State != StateDelivered {
		t.Fatalf("a late retrying overwrote delivered: %+v", d)
	}
	// Re-delivered by an operator, a refused delivery ends delivered.
	if err := record(ctx, jm, p, Delivery{State: StateRefused, Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	if err := record(ctx, jm, p, Delivery{State: StateDelivered, Attempts: 1, StatusCode: 204}); err != nil {
		t.Fatal(err)
	}
	if d := state(); d.State != StateDelivered || d.StatusCode != 204 {
		t.Fatalf("a re-delivery's end: %+v", d)
	}
}
