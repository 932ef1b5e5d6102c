package api

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// DefaultTenant owns every job when no API keys are configured.
const DefaultTenant = "default"

const tenantKey = "tenant"

type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatfleet_http_requests_total", Help: "API requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "chatfleet_http_request_duration_seconds", Help: "API latency by route pattern (streams and long polls included).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

// routeLabel is the matched route pattern, never the raw path, so that label
// values stay bounded.
func routeLabel(c echo.Context) string {
	if p := c.Path(); p != "" && p != "/*" {
		return p
	}
	return "unmatched"
}

// requestLog gives every request an id and a context logger, logs one line
// when it ends, and counts it.
func requestLog(base zerolog.Logger, m *httpMetrics) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			rid := c.Request().Header.Get(echo.HeaderXRequestID)
			if !validRequestID(rid) {
				rid = newRequestID()
			}
			c.Response().Header().Set(echo.HeaderXRequestID, rid)
			log := base.With().Str("request_id", rid).Logger()
			c.SetRequest(c.Request().WithContext(log.WithContext(c.Request().Context())))
			err := next(c)
			if err != nil {
				c.Error(err)
			}
			took := time.Since(start)
			route := routeLabel(c)
			m.requests.WithLabelValues(route, strconv.Itoa(c.Response().Status)).Inc()
			m.duration.WithLabelValues(route).Observe(took.Seconds())
			ev := log.Info()
			if c.Response().Status >= 500 {
				ev = log.Error()
			}
			ev.Str("method", c.Request().Method).Str("route", route).
				Int("status", c.Response().Status).Dur("duration_ms", took)
			if t, ok := c.Get(tenantKey).(string); ok {
				ev.Str("tenant", t)
			}
			ev.Msg("request")
			return nil
		}
	}
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// keyring authenticates bearer keys. Keys are compared as SHA-256 digests in
// constant time, and every configured key is compared, so timing reveals nothing.
type keyring struct {
	digests [][32]byte
	tenants []string
}

func newKeyring(keys map[[32]byte]string) *keyring {
	k := &keyring{}
	for digest, tenant := range keys {
		k.digests = append(k.digests, digest)
		k.tenants = append(k.tenants, tenant)
	}
	return k
}

func (k *keyring) tenant(key string) (string, bool) {
	d := sha256.Sum256([]byte(key))
	found := -1
	for i := range k.digests {
		if subtle.ConstantTimeCompare(d[:], k.digests[i][:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return k.tenants[found], true
}

// auth resolves the caller's tenant. With no keys configured every caller is
// the default tenant (development only: production refuses to start so).
func auth(k *keyring) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if len(k.digests) == 0 {
				c.Set(tenantKey, DefaultTenant)
				return next(c)
			}
			h := c.Request().Header.Get("Authorization")
			key, ok := strings.CutPrefix(h, "Bearer ")
			tenant, known := k.tenant(strings.TrimSpace(key))
			if !ok || !known {
				c.Response().Header().Set("WWW-Authenticate", `Bearer realm="chatfleet"`)
				return errf(http.StatusUnauthorized, "unauthorized", "Authorization", "a valid 'Authorization: Bearer <key>' header is required")
			}
			c.Set(tenantKey, tenant)
			return next(c)
		}
	}
}

func tenantOf(c echo.Context) string {
	t, _ := c.Get(tenantKey).(string)
	return t
}
