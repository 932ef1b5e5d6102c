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
// tenant's month in the job's bucket (rkeys.Usage), once, with the result.

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
	PromptTokens     int64
	CompletionTokens int64
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
