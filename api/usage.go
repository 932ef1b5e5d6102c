package api

import (
	"math"
	"net/http"
	"slices"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/store"
)

// GET /api/v1/usage: the caller's tokens, requests and cost per day and
// model, from the usage ledger the finish script keeps.

// usageRow is one row of a usage answer; Date or Model is left out when the
// rows are grouped by the other.
type usageRow struct {
	Date             string `json:"date,omitempty"`
	Model            string `json:"model,omitempty"`
	Requests         int64  `json:"requests"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	// EstimatedTokens is the part of the tokens that was estimated: calls
	// cut before their provider reported usage.
	EstimatedTokens int64    `json:"estimated_tokens,omitempty"`
	CostUSD         *float64 `json:"cost_usd"` // null: a model without a price
	// Batch is the part of the row that batch lines made (the Batch API);
	// left out when none did.
	Batch *batchUsage `json:"batch,omitempty"`
}

// batchUsage is the part of a usage row that batch lines' answers made.
type batchUsage struct {
	Requests         int64    `json:"requests"`
	PromptTokens     int64    `json:"prompt_tokens"`
	CompletionTokens int64    `json:"completion_tokens"`
	CostUSD          *float64 `json:"cost_usd"`
}

// add counts a ledger row's batch part, at price p (nil: none).
func (b *batchUsage) add(r store.UsageRow, p *[2]float64) {
	b.Requests += r.BatchRequests
	b.PromptTokens += r.BatchPromptTokens
	b.CompletionTokens += r.BatchCompletionTokens
	if p == nil {
		b.CostUSD = nil
	} else if b.CostUSD != nil {
		*b.CostUSD = roundMicros(*b.CostUSD + (float64(r.BatchPromptTokens)*p[0]+float64(r.BatchCompletionTokens)*p[1])/1e6)
	}
}

// maxUsageDays bounds a usage query (the ledger is read month by month).
const maxUsageDays = 366

func (s *Server) usage(c echo.Context) error {
	from, to, group, err := usageQuery(c)
	if err != nil {
		return err
	}
	tenant := tenantOf(c)
	rows, err := s.store.Usage(c.Request().Context(), tenant, from, to)
	if err != nil {
		return err
	}
	data, total := s.usageRows(rows, group)
	body := map[string]any{"tenant": tenant, "from": from.Format(time.DateOnly), "to": to.Format(time.DateOnly),
		"data": data, "total": total}
	budget, err := s.jobs.Budget(c.Request().Context(), tenant)
	if err != nil {
		return err
	}
	if budget != nil {
		body["budget"] = budget
	}
	return c.JSON(http.StatusOK, body)
}

// usageQuery reads a usage query: its dates and grouping.
func usageQuery(c echo.Context) (from, to time.Time, group string, err error) {
	if from, to, err = usageRange(c.QueryParam("from"), c.QueryParam("to"), time.Now().UTC()); err != nil {
		return from, to, "", err
	}
	group = c.QueryParam("group_by")
	if group != "" && group != "day" && group != "model" {
		return from, to, "", errf(http.StatusBadRequest, "invalid_query", "group_by", "group_by must be day or model")
	}
	return from, to, group, nil
}

// usageRange reads from and to (dates, inclusive, UTC); the default is this
// month up to today.
func usageRange(fromQ, toQ string, now time.Time) (from, to time.Time, err error) {
	today := now.Truncate(24 * time.Hour)
	from, to = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC), today
	if fromQ != "" {
		if from, err = time.Parse(time.DateOnly, fromQ); err != nil {
			return from, to, errf(http.StatusBadRequest, "invalid_query", "from", "from must be a date such as 2026-11-01")
		}
	}
	if toQ != "" {
		if to, err = time.Parse(time.DateOnly, toQ); err != nil {
			return from, to, errf(http.StatusBadRequest, "invalid_query", "to", "to must be a date such as 2026-11-30")
		}
	}
	if to.Before(from) {
		return from, to, errf(http.StatusBadRequest, "invalid_query", "to", "to must not be before from")
	}
	if to.Sub(from) >= maxUsageDays*24*time.Hour {
		return from, to, errf(http.StatusBadRequest, "invalid_query", "from", "a usage query spans at most 366 days")
	}
	return from, to, nil
}

// usageRows groups the ledger's rows and prices them.
func (s *Server) usageRows(rows []store.UsageRow, group string) ([]usageRow, usageRow) {
	out := []usageRow{}
	index := map[string]int{}
	total := usageRow{}
	var totalCost float64
	priced := true
	var prices map[string][2]float64
	if s.opt.Prices != nil {
		prices = s.opt.Prices()
	}
	for _, r := range rows {
		key := r.Date + "\n" + r.Model
		row := usageRow{Date: r.Date, Model: r.Model}
		switch group {
		case "day":
			key, row.Model = r.Date, ""
		case "model":
			key, row.Date = r.Model, ""
		}
		i, ok := index[key]
		if !ok {
			i = len(out)
			index[key] = i
			row.CostUSD = new(float64)
			out = append(out, row)
		}
		o := &out[i]
		o.Requests += r.Requests
		o.PromptTokens += r.PromptTokens
		o.CompletionTokens += r.CompletionTokens
		o.EstimatedTokens += r.EstimatedTokens
		total.Requests += r.Requests
		total.PromptTokens += r.PromptTokens
		total.CompletionTokens += r.CompletionTokens
		total.EstimatedTokens += r.EstimatedTokens
		if r.BatchRequests > 0 {
			var price *[2]float64
			if p, ok := prices[r.Model]; ok {
				price = &p
			}
			for _, u := range []*usageRow{o, &total} {
				if u.Batch == nil {
					u.Batch = &batchUsage{CostUSD: new(float64)}
				}
				u.Batch.add(r, price)
			}
		}
		if p, ok := prices[r.Model]; ok && o.CostUSD != nil {
			cost := (float64(r.PromptTokens)*p[0] + float64(r.CompletionTokens)*p[1]) / 1e6
			*o.CostUSD += cost
			totalCost += cost
		} else if !ok {
			o.CostUSD, priced = nil, false
		}
	}
	for i := range out {
		if out[i].CostUSD != nil {
			v := roundMicros(*out[i].CostUSD)
			out[i].CostUSD = &v
		}
	}
	v := roundMicros(totalCost)
	total.CostUSD = &v
	if !priced && totalCost == 0 {
		total.CostUSD = nil
	}
	return out, total
}

// roundMicros keeps a cost to a millionth of a dollar (a token's price is of
// that order), without float noise.
func roundMicros(v float64) float64 { return math.Round(v*1e6) / 1e6 }

// AdminUsage answers GET /admin/api/usage (mounted behind the admin key by
// the console): every configured tenant's usage, ?from=&to=&group_by= as for
// a tenant's own.
func (s *Server) AdminUsage(c echo.Context) error {
	from, to, group, err := usageQuery(c)
	if err != nil {
		return err
	}
	tenants := []string{DefaultTenant}
	if len(s.keys.tenants) > 0 {
		tenants = slices.Compact(slices.Sorted(slices.Values(s.keys.tenants)))
	}
	out := make([]map[string]any, 0, len(tenants))
	for _, t := range tenants {
		rows, err := s.store.Usage(c.Request().Context(), t, from, to)
		if err != nil {
			return err
		}
		data, total := s.usageRows(rows, group)
		out = append(out, map[string]any{"tenant": t, "data": data, "total": total})
	}
	return c.JSON(http.StatusOK, map[string]any{"from": from.Format(time.DateOnly), "to": to.Format(time.DateOnly), "tenants": out})
}
