package jobs

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/store"
)

// Budgets stop a runaway tenant before the invoice does: a tenant's spend in
// the period (tokens, or dollars at the configured prices) is counted as its
// jobs end, and a submit once it reaches the budget is refused before
// anything is written. Jobs already queued or running finish, so a burst
// overshoots by at most the jobs in flight.

// Budget is a tenant's limit over a day or a month (UTC).
type Budget struct {
	Tokens int64   // tokens (prompt + completion) per period; 0: no token budget
	USD    float64 // dollars per period at Options.Prices; 0: no dollar budget
	Month  bool    // the period is the calendar month, else the day
	Soft   float64 // share of the budget past which the tenant is reported; 0: none
}

// BudgetError refuses a submit of a tenant whose budget is spent.
type BudgetError struct {
	Tenant  string
	Budget  string // e.g. "1000 tokens a day"
	ResetAt time.Time
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("tenant %s has spent its budget of %s; it resets at %s", e.Tenant, e.Budget, e.ResetAt.UTC().Format(time.RFC3339))
}

// period names a budget's current period and when the next begins.
func (b Budget) period(now time.Time) (string, time.Time) {
	now = now.UTC()
	if b.Month {
		start := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		return start.Format("2006-01"), start.AddDate(0, 1, 0)
	}
	start := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	return start.Format(time.DateOnly), start.AddDate(0, 0, 1)
}

func (b Budget) String() string {
	per := "a day"
	if b.Month {
		per = "a month"
	}
	if b.USD > 0 {
		return fmt.Sprintf("$%g %s", b.USD, per)
	}
	return fmt.Sprintf("%d tokens %s", b.Tokens, per)
}

// limit is the budget in the counter's unit: tokens, or millionths of a dollar.
func (b Budget) limit() int64 {
	if b.USD > 0 {
		return int64(b.USD * 1e6)
	}
	return b.Tokens
}

// checkBudget refuses a tenant whose budget is spent (one GET, only for a
// tenant with a budget).
func (m *Manager) checkBudget(ctx context.Context, tenant string) error {
	b, ok := m.opt.Budgets[tenant]
	if !ok {
		return nil
	}
	period, reset := b.period(time.Now())
	spent, err := m.st.Spent(ctx, tenant, period)
	if err != nil {
		return err
	}
	if spent >= b.limit() {
		return &BudgetError{Tenant: tenant, Budget: b.String(), ResetAt: reset}
	}
	return nil
}

// spend counts what an ended job's provider calls reported against its
// tenant's budget. Best effort after the job's end: a process that dies in
// between leaves that job uncounted (the usage ledger has it).
func (m *Manager) spend(ctx context.Context, tenant string, o store.Outcome) {
	b, ok := m.opt.Budgets[tenant]
	if !ok || o.Usage == nil {
		return
	}
	amount := int64(o.Usage.PromptTokens + o.Usage.CompletionTokens)
	if b.USD > 0 {
		model := ""
		if o.Result != nil {
			model = o.Result.Model
		}
		p := m.opt.Prices[model]
		amount = int64(float64(o.Usage.PromptTokens)*p[0] + float64(o.Usage.CompletionTokens)*p[1]) // per million tokens → micro-dollars
	}
	if amount <= 0 {
		return
	}
	period, reset := b.period(time.Now())
	if err := m.st.Spend(context.WithoutCancel(ctx), tenant, period, amount, time.Until(reset)+24*time.Hour); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("tenant", tenant).Msg("could not count the job against its tenant's budget")
	}
}

// BudgetState is a tenant's budget and its spend in the current period.
type BudgetState struct {
	Budget  string    `json:"budget"` // e.g. "1000 tokens a day"
	Unit    string    `json:"unit"`   // tokens or usd
	Limit   float64   `json:"limit"`
	Spent   float64   `json:"spent"`
	ResetAt time.Time `json:"reset_at"`
	// SoftLimit is the spend past which the tenant is reported (absent: none).
	SoftLimit     *float64 `json:"soft_limit,omitempty"`
	OverSoftLimit bool     `json:"over_soft_limit"`
}

// Budget returns a tenant's budget state (nil: the tenant has no budget).
func (m *Manager) Budget(ctx context.Context, tenant string) (*BudgetState, error) {
	b, ok := m.opt.Budgets[tenant]
	if !ok {
		return nil, nil
	}
	period, reset := b.period(time.Now())
	spent, err := m.st.Spent(ctx, tenant, period)
	if err != nil {
		return nil, err
	}
	st := &BudgetState{Budget: b.String(), Unit: "tokens", Limit: float64(b.Tokens), Spent: float64(spent), ResetAt: reset}
	if b.USD > 0 {
		st.Unit, st.Limit, st.Spent = "usd", b.USD, float64(spent)/1e6
	}
	if b.Soft > 0 {
		soft := st.Limit * b.Soft
		st.SoftLimit, st.OverSoftLimit = &soft, st.Spent >= soft
	}
	return st, nil
}

// OverSoftLimit returns the state of every tenant past its budget's soft
// limit in the current period (one read per tenant with a soft limit).
func (m *Manager) OverSoftLimit(ctx context.Context) (map[string]*BudgetState, error) {
	out := map[string]*BudgetState{}
	for tenant, b := range m.opt.Budgets {
		if b.Soft <= 0 {
			continue
		}
		st, err := m.Budget(ctx, tenant)
		if err != nil {
			return nil, err
		}
		if st.OverSoftLimit {
			out[tenant] = st
		}
	}
	return out, nil
}
