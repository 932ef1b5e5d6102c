package store

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// The usage ledger: the finish script adds each job's reported usage to its
// tenant's month in the job's bucket (rkeys.Usage), once, with the result;
// the script that records a failed attempt adds what its call used. Fields
// are "<day>|<model>|<kind>": r (requests), p and c (prompt and completion
// tokens), ep and ec (the part of p and c that was estimated: a call cut
// before its provider reported usage), br, bp and bc (the part of r, p and c
// that batch lines' answers made).

// Spent is what a provider call that gave no answer used: as its provider
// reported it, or estimated from what it streamed (Estimated).
type Spent struct {
	Model              string // the model the call asked for
	Prompt, Completion int
	Estimated          bool
	// BudgetCost is its cost against the tenant's budget (tokens or
	// millionths of a dollar), added to what the job's end settles.
	BudgetCost int64
}

// spentLua counts a call's use: count_spent(job, ledger, s), s a spentArgs.
const spentLua = `
local function count_spent(job, ledger, s)
  local field, p, c, estimated, ttl, cost = s.field, s.prompt, s.completion, s.estimated, s.ttl, s.budget_cost
  if field == '' then return end
  redis.call('HINCRBY', ledger, field .. '|p', p)
  redis.call('HINCRBY', ledger, field .. '|c', c)
  if estimated then
    redis.call('HINCRBY', ledger, field .. '|ep', p)
    redis.call('HINCRBY', ledger, field .. '|ec', c)
  end
  redis.call('EXPIRE', ledger, ttl)
  if cost > 0 and redis.call('EXISTS', job) == 1 then redis.call('HINCRBY', job, 'budget_extra', cost) end
end
`

// spentArgs are count_spent's arguments.
type spentArgs struct {
	Field      string `json:"field"` // "<day>|<model>"; empty: nothing to count
	Prompt     int    `json:"prompt"`
	Completion int    `json:"completion"`
	Estimated  bool   `json:"estimated"`
	TTL        int64  `json:"ttl"` // s
	BudgetCost int64  `json:"budget_cost"`
}

func (s *Store) spentArgs(sp *Spent, now time.Time) spentArgs {
	if sp == nil || (sp.Prompt == 0 && sp.Completion == 0) {
		return spentArgs{TTL: seconds(s.usageTTL())}
	}
	model := strings.ReplaceAll(cmp.Or(sp.Model, "unknown"), "|", "_")
	return spentArgs{Field: now.Format("02") + "|" + model, Prompt: sp.Prompt, Completion: sp.Completion, Estimated: sp.Estimated,
		TTL: seconds(s.usageTTL()), BudgetCost: sp.BudgetCost}
}

// usageModel names the model a job's usage is counted under: the one it
// asked for, not the name the provider echoed (a dated snapshot's name has
// no price).
func usageModel(o Outcome) string {
	m := o.UsageModel
	if m == "" && o.Result != nil {
		m = o.Result.Model
	}
	if m == "" {
		return "unknown"
	}
	return strings.ReplaceAll(m, "|", "_")
}

func (s *Store) usageTTL() time.Duration {
	if s.opt.UsageRetention > 0 {
		return s.opt.UsageRetention + 31*24*time.Hour // kept that long after the month's end
	}
	return (90 + 31) * 24 * time.Hour
}

// UsageRow is one day's usage of one model.
type UsageRow struct {
	Date             string // 2006-01-02
	Model            string
	Requests         int64
	PromptTokens     int64 // estimates included
	CompletionTokens int64 // estimates included
	// EstimatedTokens is the part of the tokens that was estimated (calls
	// cut before their provider reported usage).
	EstimatedTokens int64
	// The part of Requests and of the answers' tokens that batch lines made.
	BatchRequests, BatchPromptTokens, BatchCompletionTokens int64
}

// Usage returns a tenant's usage per day and model from day from to day to
// (inclusive, UTC), oldest first.
func (s *Store) Usage(ctx context.Context, tenant string, from, to time.Time) ([]UsageRow, error) {
	var months []time.Time
	for m := time.Date(from.Year(), from.Month(), 1, 0, 0, 0, 0, time.UTC); !m.After(to); m = m.AddDate(0, 1, 0) {
		months = append(months, m)
	}
	cmds := make([]*redis.MapStringStringCmd, 0, len(months)*rkeys.Buckets)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, m := range months {
			for b := range rkeys.Buckets {
				cmds = append(cmds, p.HGetAll(ctx, rkeys.Usage(b, tenant, m.Format("2006-01"))))
			}
		}
		return nil
	})
	if err != nil {
		return nil, unavailable("read usage", err)
	}
	type key struct{ date, model string }
	rows := map[key]*UsageRow{}
	for i, c := range cmds {
		month := months[i/rkeys.Buckets]
		for f, v := range c.Val() {
			parts := strings.Split(f, "|")
			if len(parts) != 3 {
				continue
			}
			day, err := strconv.Atoi(parts[0])
			n, err2 := strconv.ParseInt(v, 10, 64)
			if err != nil || err2 != nil {
				continue
			}
			date := time.Date(month.Year(), month.Month(), day, 0, 0, 0, 0, time.UTC)
			if date.Before(from) || date.After(to) {
				continue
			}
			k := key{date.Format("2006-01-02"), parts[1]}
			r := rows[k]
			if r == nil {
				r = &UsageRow{Date: k.date, Model: k.model}
				rows[k] = r
			}
			switch parts[2] {
			case "r":
				r.Requests += n
			case "p":
				r.PromptTokens += n
			case "c":
				r.CompletionTokens += n
			case "ep", "ec":
				r.EstimatedTokens += n
			case "br":
				r.BatchRequests += n
			case "bp":
				r.BatchPromptTokens += n
			case "bc":
				r.BatchCompletionTokens += n
			}
		}
	}
	out := make([]UsageRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b UsageRow) int {
		return cmp.Or(strings.Compare(a.Date, b.Date), strings.Compare(a.Model, b.Model))
	})
	return out, nil
}

// countSpent counts a call's use alone (spentLua). KEYS: job, ledger. ARGV[1]: spentArgs JSON.
var countSpent = redis.NewScript(lua(spentLua, `
local a = cjson.decode(ARGV[1])
count_spent(KEYS[1], KEYS[2], a)
return 1
`))

// CountSpent counts what a provider call of a job used when nothing else is
// recorded of its attempt (it was canceled, taken over, or cut by a
// shutdown): the provider billed it all the same.
func (s *Store) CountSpent(ctx context.Context, id, tenant string, spent *Spent) error {
	now := s.opt.Clock().UTC()
	a := s.spentArgs(spent, now)
	if a.Field == "" {
		return nil
	}
	err := countSpent.Run(ctx, s.rdb, []string{rkeys.Job(id), rkeys.Usage(rkeys.Bucket(id), tenant, now.Format("2006-01"))}, argsJSON(a)).Err()
	if err != nil {
		return unavailable("count usage", err)
	}
	return nil
}
