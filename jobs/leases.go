package jobs

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// A running attempt holds a heartbeat lease (`<job id>:<fence>` in its
// bucket's lease set): StartAttempt writes it, this process renews the
// leases of all its attempts with one command per bucket, and the rescuer
// (supervise.go) claims and takes over the ones that expire.

// leaseSet holds the attempts running in this process.
type leaseSet struct {
	mu      sync.Mutex
	members map[string]struct{}
}

func (l *leaseSet) add(id string, fence int) string {
	m := rkeys.LeaseMember(id, fence)
	l.mu.Lock()
	if l.members == nil {
		l.members = map[string]struct{}{}
	}
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

// RenewLeases extends the leases of this process's attempts every third of
// the lease until ctx ends: a worker that dies or stops stops renewing, and
// its jobs are taken over once the lease runs out.
func (m *Manager) RenewLeases(ctx context.Context, lease time.Duration, log zerolog.Logger) {
	t := time.NewTicker(lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, lease/3)
			if err := m.st.RenewLeases(rctx, m.leases.list(), lease); err != nil && ctx.Err() == nil {
				log.Warn().Err(err).Msg("could not renew the running jobs' leases")
			}
			cancel()
		}
	}
}

// Lease is a running attempt's heartbeat lease.
func (m *Manager) Lease() time.Duration { return m.opt.Lease }
