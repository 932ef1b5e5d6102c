package api

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// budgetWatchEvery is how often each API process reads the spend of the
// tenants with a soft limit (one GET each).
const budgetWatchEvery = 5 * time.Second

// watchBudgets keeps chatfleet_tenants_over_soft_limit (a count, so that
// the tenants, unbounded, are not labels) and logs each tenant once as it
// passes its soft limit, until ctx ends. Every API process reports the same
// count: dashboards and alerts take the max.
func (s *Server) watchBudgets(ctx context.Context, over prometheus.Gauge) {
	t := time.NewTicker(budgetWatchEvery)
	defer t.Stop()
	reported := map[string]time.Time{} // tenant -> the period's reset it was logged for
	for {
		if states, err := s.jobs.OverSoftLimit(ctx); err == nil {
			over.Set(float64(len(states)))
			for tenant, st := range states {
				if reported[tenant].Equal(st.ResetAt) {
					continue
				}
				reported[tenant] = st.ResetAt
				zerolog.Ctx(ctx).Warn().Str("tenant", tenant).Str("budget", st.Budget).Float64("spent", st.Spent).
					Float64("soft_limit", *st.SoftLimit).Time("reset_at", st.ResetAt).Msg("tenant passed its budget's soft limit")
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
