package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/chatfleet/chatfleet/internal/redisconn"
)

func intVar(field func(*Config) *int, min int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("must be a whole number, got %q", v)
		}
		if n < min {
			return fmt.Errorf("must be at least %d, got %d", min, n)
		}
		*field(c) = n
		return nil
	}
}

func int64Var(field func(*Config) *int64) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("must be a whole number of bytes, got %q", v)
		}
		if n < 0 {
			return fmt.Errorf("must be at least 0, got %d", n)
		}
		*field(c) = n
		return nil
	}
}

func durationVar(field func(*Config) *time.Duration, min time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("must be a duration such as 500ms, 30s or 2h, got %q", v)
		}
		if d < min {
			return fmt.Errorf("must be at least %s, got %s", min, d)
		}
		*field(c) = d
		return nil
	}
}

func validAddr(v string) error {
	i := strings.LastIndex(v, ":")
	if i < 0 {
		return fmt.Errorf("must be host:port or :port, got %q", v)
	}
	p, err := strconv.Atoi(v[i+1:])
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port must be 0..65535, got %q", v)
	}
	return nil
}

func validRedisURL(v string) error {
	if v == "" {
		return nil
	}
	if strings.HasPrefix(v, "redis-cluster://") || strings.HasPrefix(v, "rediss-cluster://") {
		// host:port[,host:port…] is not a URL host: the one parser reads it.
		_, err := redisconn.ConnOpt(v)
		return err
	}
	u, err := url.Parse(v)
	if err != nil {
		return errors.New("is not a valid URL")
	}
	switch u.Scheme {
	case "redis", "rediss", "redis-sentinel":
		if u.Host == "" {
			return errors.New("has no host")
		}
	case "redis-socket":
		if u.Path == "" {
			return errors.New("has no socket path")
		}
	default:
		return fmt.Errorf("scheme must be redis, rediss, redis-socket, redis-sentinel, redis-cluster or rediss-cluster, got %q", u.Scheme)
	}
	return nil
}

func validOptionalURL(v string) error {
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("must be an http:// or https:// URL")
	}
	return nil
}

// parseAPIKeys reads tenant:key and tenant:sha256:<hex> entries into key
// digests. Errors never quote an entry: it holds a secret.
func parseAPIKeys(v string) (map[[32]byte]string, error) {
	keys := map[[32]byte]string{}
	if v == "" {
		return keys, nil
	}
	for i, pair := range strings.Split(v, ",") {
		tenant, key, ok := strings.Cut(strings.TrimSpace(pair), ":")
		if !ok || tenant == "" || key == "" {
			return nil, fmt.Errorf("entry %d is not tenant:key", i+1)
		}
		if !validTenant(tenant) {
			return nil, fmt.Errorf("entry %d: tenant must be 1-64 of a-z, 0-9, _ and -", i+1)
		}
		var digest [32]byte
		if h, hashed := strings.CutPrefix(key, "sha256:"); hashed {
			b, err := hex.DecodeString(h)
			if err != nil || len(b) != 32 {
				return nil, fmt.Errorf("entry %d: sha256: must be followed by 64 hex digits", i+1)
			}
			copy(digest[:], b)
		} else {
			if len(key) < 16 {
				return nil, fmt.Errorf("entry %d: key must be at least 16 characters", i+1)
			}
			digest = sha256.Sum256([]byte(key))
		}
		if _, dup := keys[digest]; dup {
			return nil, fmt.Errorf("entry %d: key is used twice", i+1)
		}
		keys[digest] = tenant
	}
	return keys, nil
}

func validTenant(t string) bool {
	if len(t) == 0 || len(t) > 64 {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func boolVar(field func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("must be true or false, got %q", v)
		}
		*field(c) = b
		return nil
	}
}

// Price is a model's price in US dollars per million tokens.
type Price struct{ Input, Output float64 }

// parsePrices reads model:input=X,output=Y;… (both prices required).
func parsePrices(v string) (map[string]Price, error) {
	out := map[string]Price{}
	for _, entry := range strings.Split(v, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		model, rest, ok := strings.Cut(entry, ":")
		model = strings.TrimSpace(model)
		if !ok || model == "" {
			return nil, fmt.Errorf("%q: want model:input=X,output=Y", entry)
		}
		var p Price
		seen := map[string]bool{}
		for _, kv := range strings.Split(rest, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
			f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if !ok || err != nil || f < 0 {
				return nil, fmt.Errorf("%s: %q: want input=X or output=Y with X, Y dollars per million tokens", model, kv)
			}
			switch strings.TrimSpace(k) {
			case "input":
				p.Input = f
			case "output":
				p.Output = f
			default:
				return nil, fmt.Errorf("%s: unknown price %q (input, output)", model, k)
			}
			seen[strings.TrimSpace(k)] = true
		}
		if !seen["input"] || !seen["output"] {
			return nil, fmt.Errorf("%s: needs both input= and output=", model)
		}
		if _, dup := out[model]; dup {
			return nil, fmt.Errorf("%s: priced twice", model)
		}
		out[model] = p
	}
	return out, nil
}

// Budget is a tenant's spending limit per day or month.
type Budget struct {
	Tokens int64
	USD    float64
	Month  bool
	// SoftPercent is the share of the budget past which the tenant is
	// reported (metric and log) before it is refused; 0: none.
	SoftPercent int
}

// parseBudgets reads tenant:tokens=N/day or tenant:usd=N/month, each with an
// optional ,soft=P% (the alert's share of the budget), ;-separated.
func parseBudgets(v string) (map[string]Budget, error) {
	out := map[string]Budget{}
	for _, entry := range strings.Split(v, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		entry, soft, hasSoft := strings.Cut(entry, ",")
		tenant, rest, ok := strings.Cut(entry, ":")
		kind, amount, ok2 := strings.Cut(rest, "=")
		value, per, ok3 := strings.Cut(amount, "/")
		tenant = strings.TrimSpace(tenant)
		if !ok || !ok2 || !ok3 || tenant == "" {
			return nil, fmt.Errorf("%q: want tenant:tokens=N/day or tenant:usd=N/month", entry)
		}
		var b Budget
		switch per {
		case "day":
		case "month":
			b.Month = true
		default:
			return nil, fmt.Errorf("%s: period %q: want day or month", tenant, per)
		}
		switch kind {
		case "tokens":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("%s: tokens must be a whole number above 0, got %q", tenant, value)
			}
			b.Tokens = n
		case "usd":
			f, err := strconv.ParseFloat(value, 64)
			if err != nil || f <= 0 {
				return nil, fmt.Errorf("%s: usd must be a number above 0, got %q", tenant, value)
			}
			b.USD = f
		default:
			return nil, fmt.Errorf("%s: %q: want tokens or usd", tenant, kind)
		}
		if hasSoft {
			pct, ok := strings.CutPrefix(strings.TrimSuffix(strings.TrimSpace(soft), "%"), "soft=")
			n, err := strconv.Atoi(pct)
			if !ok || err != nil || n < 1 || n > 99 {
				return nil, fmt.Errorf("%s: %q: want soft=P%% with P from 1 to 99", tenant, soft)
			}
			b.SoftPercent = n
		}
		if _, dup := out[tenant]; dup {
			return nil, fmt.Errorf("%s: budgeted twice", tenant)
		}
		out[tenant] = b
	}
	return out, nil
}

// parseTenantWeights reads `tenant:weight,…` (weights positive numbers, up
// to 1000; a tenant named once).
func parseTenantWeights(v string) (map[string]float64, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	out := map[string]float64{}
	for _, part := range strings.Split(v, ",") {
		tenant, w, ok := strings.Cut(strings.TrimSpace(part), ":")
		tenant = strings.TrimSpace(tenant)
		if !ok || tenant == "" {
			return nil, fmt.Errorf("%q is not tenant:weight", part)
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(w), 64)
		if err != nil || !(f > 0) || f > 1000 {
			return nil, fmt.Errorf("weight of %q must be a number above 0 and at most 1000, got %q", tenant, strings.TrimSpace(w))
		}
		if _, dup := out[tenant]; dup {
			return nil, fmt.Errorf("tenant %q is listed twice", tenant)
		}
		out[tenant] = f
	}
	return out, nil
}
