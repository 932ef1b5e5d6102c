package orchestration

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// leaseSet holds the attempts running in this process; one command renews
// all their leases together.
type leaseSet struct {
	mu      sync.Mutex
	members map[string]struct{}
}

func newLeaseSet() *leaseSet { return &leaseSet{members: map[string]struct{}{}} }

func (l *leaseSet) add(id string, attempt int) string {
	return l.addMember(rkeys.LeaseMember(id, attempt))
}

func (l *leaseSet) addMember(m string) string {
	l.mu.Lock()
	l.members[m] = struct{}{}
	l.mu.Unlock()
	return m
}

func (l *leaseSet) remove(m string) {
	l.mu.Lock()
	delete(l.members, m)
	l.mu.Unlock()
}

func (l *leaseSet) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.members))
	for m := range l.members {
		out = append(out, m)
	}
	return out
}

// renewLeases extends this process's leases every third of the lease until
// ctx ends: a worker that dies or stops stops renewing, and its jobs are
// taken over once the lease runs out.
func (p *Pipeline) renewLeases(ctx context.Context, log zerolog.Logger) {
	t := time.NewTicker(p.opt.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, p.opt.Lease/3)
			if err := p.store.RenewLeases(rctx, p.leases.list(), time.Now().Add(p.opt.Lease)); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Msg("could not renew the running jobs' leases")
			}
			cancel()
		}
	}
}
