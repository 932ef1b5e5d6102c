package jobs

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/llm"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Budgets stop a runaway tenant before the invoice does: each submit
// reserves its estimated cost (tokens, or dollars at the configured prices)
// against the tenant's period, and is refused before anything is written
// once the spend and the reservations reach the budget. A job's reservation
// is settled against what it cost when it ends (store/budget.go), so a burst
// of submits overshoots the budget by at most one job's cost.

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

// budgetKeptFor is how long a period's counts are kept past its end: the
// jobs that reserved in it settle there, however long they ran.
const budgetKeptFor = 8 * 24 * time.Hour

// periodTTL is how long the counts of a period are kept, from now.
func (b Budget) periodTTL(period string) time.Duration {
	layout := time.DateOnly
	next := func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }
	if b.Month {
		layout, next = "2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }
	}
	start, err := time.Parse(layout, period)
	if err != nil {
		return budgetKeptFor
	}
	return max(time.Until(next(start)), 0) + budgetKeptFor
}

// reserve reserves a job's estimated cost against its tenant's budget and
// returns the period it reserved in (empty: the tenant has no budget) and
// whether this call made the reservation (false for a request sent again,
// whose job had reserved). A tenant whose budget is spent or reserved gets a
// BudgetError.
func (m *Manager) reserve(ctx context.Context, nj store.NewJob, p tasks.ChatPayload) (period string, made bool, err error) {
	b, ok := m.opt.Budgets[nj.Tenant]
	if !ok {
		return "", false, nil
	}
	period, reset := b.period(time.Now())
	prompt, output := llm.EstimateJob(p)
	estimate := b.cost(cmp.Or(p.Model, m.defaultModel()), prompt, output, m.prices())
	n, err := m.st.Reserve(ctx, nj.Tenant, period, nj.ID, estimate, b.limit(), b.periodTTL(period))
	if err != nil {
		return "", false, err
	}
	if n == store.Refused {
		return "", false, &BudgetError{Tenant: nj.Tenant, Budget: b.String(), ResetAt: reset}
	}
	return period, n == store.Reserved, nil
}

// unreserve gives back a reservation whose job was not written (or was
// written before, by the request this one repeats).
func (m *Manager) unreserve(ctx context.Context, nj store.NewJob) {
	b := m.opt.Budgets[nj.Tenant]
	if err := m.st.Unreserve(context.WithoutCancel(ctx), nj.Tenant, nj.BudgetPeriod, nj.ID, b.periodTTL(nj.BudgetPeriod)); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("tenant", nj.Tenant).Msg("could not give back a budget reservation; it lapses with its period")
	}
}

// cost is what tokens of a model cost against the budget: tokens, or
// millionths of a dollar at the model's price (a model without a price
// costs nothing in dollars).
func (b Budget) cost(model string, prompt, completion int, prices map[string][2]float64) int64 {
	if b.USD <= 0 {
		return int64(prompt + completion)
	}
	p := prices[model]
	return int64(float64(prompt)*p[0] + float64(completion)*p[1]) // per million tokens → micro-dollars
}

// budgetSpend is what an ended job cost against its tenant's budget, priced
// by the model it asked for.
func (m *Manager) budgetSpend(tenant string, o store.Outcome) int64 {
	b, ok := m.opt.Budgets[tenant]
	if !ok || o.Usage == nil {
		return 0
	}
	return b.cost(usageModel(o), o.Usage.PromptTokens, o.Usage.CompletionTokens, m.prices())
}

// usageModel is the model an outcome's usage is priced under: the one the
// call asked for, else the one the provider named.
func usageModel(o store.Outcome) string {
	if o.UsageModel != "" || o.Result == nil {
		return o.UsageModel
	}
	return o.Result.Model
}

// settle settles an ended job's budget reservation. Best effort: a job left
// unsettled (Redis away, this process dying) is in its bucket's settle
// index, which the supervisor sweeps.
func (m *Manager) settle(ctx context.Context, id string) {
	if err := m.st.Settle(context.WithoutCancel(ctx), id, m.settleTTL); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("job_id", id).Msg("could not settle the job's budget reservation; the sweep will")
	}
}

// settleTTL is how long a period's counts are kept (from now) when a job of
// any tenant settles in it: the longest a budget keeps a period.
func (m *Manager) settleTTL(period string) time.Duration {
	return Budget{Month: len(period) == len("2006-01")}.periodTTL(period)
}

// BudgetState is a tenant's budget and its spend in the current period.
type BudgetState struct {
	Budget string  `json:"budget"` // e.g. "1000 tokens a day"
	Unit   string  `json:"unit"`   // tokens or usd
	Limit  float64 `json:"limit"`
	Spent  float64 `json:"spent"`
	// Reserved is the estimated cost of the jobs queued or running, held
	// against the budget until they end.
	Reserved float64   `json:"reserved"`
	ResetAt  time.Time `json:"reset_at"`
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
	counts, err := m.st.Budget(ctx, tenant, period)
	if err != nil {
		return nil, err
	}
	st := &BudgetState{Budget: b.String(), Unit: "tokens", Limit: float64(b.Tokens), Spent: float64(counts.Spent),
		Reserved: float64(counts.Reserved), ResetAt: reset}
	if b.USD > 0 {
		st.Unit, st.Limit, st.Spent, st.Reserved = "usd", b.USD, float64(counts.Spent)/1e6, float64(counts.Reserved)/1e6
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
