package store

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// The job list: a tenant's jobs, newest first, from its listing in each
// bucket (rkeys.Listing, written with each record). A page merges the
// buckets' newest entries after the cursor; entries whose record has
// expired or was purged are passed over.

// ListFilter narrows a job list.
type ListFilter struct {
	SessionID, Status string // empty: any
}

// Cursor is a position in a job list: after the job created at Ms with ID
// (newest first, ties by id).
type Cursor struct {
	Ms int64
	ID string
}

// String encodes the cursor for a client.
func (c Cursor) String() string { return strconv.FormatInt(c.Ms, 10) + "." + c.ID }

// ParseCursor reads a client's cursor ("" is the start).
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{Ms: math.MaxInt64}, nil
	}
	ms, id, ok := strings.Cut(s, ".")
	n, err := strconv.ParseInt(ms, 10, 64)
	if !ok || err != nil || !strings.HasPrefix(id, "job_") {
		return Cursor{}, fmt.Errorf("not a cursor of this list")
	}
	return Cursor{Ms: n, ID: id}, nil
}

// before reports whether an entry comes after the cursor in the list.
func (c Cursor) before(ms int64, id string) bool {
	return ms < c.Ms || (ms == c.Ms && id < c.ID)
}

type listed struct {
	ms int64
	id string
}

// maxScan bounds the entries one page looks at (filters that match few jobs
// end a page early, with a cursor to go on from).
const maxScan = 2000

// List returns up to limit of a tenant's jobs after the cursor, newest first,
// and the cursor of the next page (nil at the end).
func (s *Store) List(ctx context.Context, tenant string, f ListFilter, limit int, after Cursor) ([]Job, *Cursor, error) {
	var out []Job
	var lastIncluded listed
	oldest := s.opt.Clock().Add(-s.opt.Retention).UnixMilli()
	scanned := 0
	for {
		fetch := limit + 1
		entries, more, err := s.listEntries(ctx, tenant, after, fetch, oldest)
		if err != nil {
			return nil, nil, err
		}
		if len(entries) > fetch {
			entries = entries[:fetch]
			more = true
		}
		jobs, err := s.getMany(ctx, entries)
		if err != nil {
			return nil, nil, err
		}
		for i, e := range entries {
			after = Cursor{Ms: e.ms, ID: e.id}
			scanned++
			j := jobs[i]
			if j == nil || j.Tenant != tenant || (f.SessionID != "" && j.SessionID != f.SessionID) || (f.Status != "" && j.Status != f.Status) {
				continue
			}
			if len(out) == limit {
				// One more matches: the page ends before it.
				return out, &Cursor{Ms: lastIncluded.ms, ID: lastIncluded.id}, nil
			}
			out = append(out, *j)
			lastIncluded = e
		}
		if !more {
			return out, nil, nil
		}
		if scanned >= maxScan {
			return out, &after, nil
		}
	}
}

// listEntries merges the buckets' newest entries after the cursor (up to
// fetch of each), newest first; more says some bucket may hold others.
func (s *Store) listEntries(ctx context.Context, tenant string, after Cursor, fetch int, oldest int64) ([]listed, bool, error) {
	max := "+inf"
	if after.Ms != math.MaxInt64 {
		max = strconv.FormatInt(after.Ms, 10)
	}
	// Entries created in the cursor's millisecond may precede it: fetch
	// enough more that a few of them cannot hide the ones after it.
	per := int64(fetch + 64)
	cmds := make([]*redis.ZSliceCmd, rkeys.Buckets)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for b := range cmds {
			cmds[b] = p.ZRevRangeByScoreWithScores(ctx, rkeys.Listing(b, tenant),
				&redis.ZRangeBy{Max: max, Min: strconv.FormatInt(oldest, 10), Count: per})
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return nil, false, unavailable("list jobs", err)
	}
	var out []listed
	more := false
	for _, c := range cmds {
		zs := c.Val()
		if int64(len(zs)) == per {
			more = true
		}
		for _, z := range zs {
			id, _ := z.Member.(string)
			if ms := int64(z.Score); after.before(ms, id) {
				out = append(out, listed{ms: ms, id: id})
			}
		}
	}
	slices.SortFunc(out, func(a, b listed) int { return cmp.Or(cmp.Compare(b.ms, a.ms), strings.Compare(b.id, a.id)) })
	return out, more, nil
}

// getMany reads records in one round trip (nil for one that is gone).
func (s *Store) getMany(ctx context.Context, entries []listed) ([]*Job, error) {
	cmds := make([]*redis.SliceCmd, len(entries))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, e := range entries {
			cmds[i] = p.HMGet(ctx, rkeys.Job(e.id), recordFields...)
		}
		return nil
	})
	if err != nil && err != redis.Nil {
		return nil, unavailable("list jobs", err)
	}
	out := make([]*Job, len(entries))
	for i, c := range cmds {
		if j, err := parseRecord(entries[i].id, c.Val()); err == nil {
			out[i] = &j
		}
	}
	return out, nil
}
