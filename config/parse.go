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
