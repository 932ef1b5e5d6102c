package stream

import (
	"context"
	"time"

	"github.com/chatfleet/chatfleet/store"
)

// Sink receives a followed job's events. Open is called once the live
// subscription stands, before the first event; Heartbeat when nothing happens.
type Sink interface {
	Open() error
	Event(store.Event) error
	Heartbeat() error
}

// Follow delivers every event of job id after seq `after`, exactly once and in
// order, then the live ones, until the job's final event or ctx ends. It
// subscribes first and reads the log second, and merges the two by seq: a live
// event already read from the log is skipped, a gap is filled from the log.
// The same holds whichever API process runs it.
func Follow(ctx context.Context, hub *Hub, st store.Reader, id string, after int64, heartbeat time.Duration, sink Sink) error {
	sub, err := hub.Subscribe(ctx, id)
	if err != nil {
		return err
	}
	defer sub.Close()
	return FollowSubscribed(ctx, sub, st, id, after, heartbeat, sink)
}

// AwaitFinal is Follow for a client that needs only the job's end (a
// request answered whole): the sink still gets every event.
func AwaitFinal(ctx context.Context, hub *Hub, st store.Reader, id string, heartbeat time.Duration, sink Sink) error {
	sub, err := hub.SubscribeFinal(ctx, id)
	if err != nil {
		return err
	}
	defer sub.Close()
	return FollowSubscribed(ctx, sub, st, id, 0, heartbeat, sink)
}

// FollowSubscribed is Follow on a subscription the caller made (and closes).
func FollowSubscribed(ctx context.Context, sub *Subscription, st store.Reader, id string, after int64, heartbeat time.Duration, sink Sink) error {
	if err := sink.Open(); err != nil {
		return err
	}

	last := after
	// retryAt is the seq of the last retry event sent: a live event of an
	// attempt that began before it (Event.Live) comes from a worker that was
	// fenced out and does not know it yet, and is dropped.
	var retryAt int64
	send := func(ev store.Event) error {
		if err := sink.Event(ev); err != nil {
			return err
		}
		last = ev.Seq
		if ev.Type == store.EventRetry {
			retryAt = ev.Seq
		}
		return nil
	}
	// catchUp sends what the log holds past last; it reports a final event.
	catchUp := func() (bool, error) {
		evs, err := st.Events(ctx, id, last)
		if err != nil {
			return false, err
		}
		for _, ev := range evs {
			if ev.Seq != last+1 {
				continue // cannot happen: the log is append-only and gapless
			}
			if err := send(ev); err != nil {
				return false, err
			}
			if store.FinalEvent(ev.Type) {
				return true, nil
			}
		}
		return false, nil
	}

	if final, err := catchUp(); final || err != nil {
		return err
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	asked := false // the worker was asked to write its log up to the live events
	for {
		var final bool
		var err error
		select {
		case <-ctx.Done():
			return nil
		case ev := <-sub.Events:
			switch {
			case ev.Live > 0 && ev.Live <= retryAt:
				continue // an attempt's output that its retry event retracted
			case ev.Seq <= last:
				continue // already sent from the log
			case ev.Seq > last+1:
				// A gap: the log has the missing events, or, when they went
				// out live before this follower subscribed, will have them
				// once the worker writes it, which it is asked to do now.
				if asked && ev.Live > 0 {
					continue // the worker's write, published, brings the follower here
				}
				if final, err = catchUp(); err == nil && !final && ev.Live > 0 && ev.Seq > last+1 {
					asked = true
					sub.hub.syncLog(ctx, id)
				}
			default:
				if err = send(ev); err == nil {
					final, asked = store.FinalEvent(ev.Type), false
				}
			}
		case <-sub.Lagged:
			final, err = catchUp()
		case <-tick.C:
			// Also a safety net for a live message lost in a reconnect.
			if err = sink.Heartbeat(); err == nil {
				final, err = catchUp()
			}
		}
		if final || err != nil {
			return err
		}
	}
}
