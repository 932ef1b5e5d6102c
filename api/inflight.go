package api

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/labstack/echo/v4"
)

// inflight bounds the request bytes this API process reads, decodes and
// holds until their job is submitted: in all (CHATFLEET_MAX_INFLIGHT_BYTES)
// and per tenant (CHATFLEET_TENANT_MAX_INFLIGHT_BYTES). A request over
// either is refused before its body is read, so one tenant's large bodies
// cannot take the process's memory or the other tenants' service. A request
// is admitted while the bytes already in flight are under the limit with
// it, and always when nothing is in flight (a lone body as large as a route
// allows still passes).
type inflight struct {
	max, tenantMax int64 // 0: no limit

	mu       sync.Mutex
	total    int64
	byTenant map[string]int64
}

func newInflight(max, tenantMax int64) *inflight {
	return &inflight{max: max, tenantMax: tenantMax, byTenant: map[string]int64{}}
}

// take reserves n bytes for a tenant; false when over a limit.
func (f *inflight) take(tenant string, n int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.byTenant[tenant]
	if (f.max > 0 && f.total > 0 && f.total+n > f.max) || (f.tenantMax > 0 && t > 0 && t+n > f.tenantMax) {
		return false
	}
	f.total += n
	f.byTenant[tenant] = t + n
	return true
}

func (f *inflight) give(tenant string, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.total -= n
	if t := f.byTenant[tenant] - n; t > 0 {
		f.byTenant[tenant] = t
	} else {
		delete(f.byTenant, tenant)
	}
}

// releaseKey holds the function that gives a request's bytes back.
const releaseKey = "chatfleet.inflight.release"

// limit is the middleware of a route whose bodies are at most maxBody bytes
// (a body without Content-Length counts as that much). It runs after auth:
// the tenant is known. The bytes go back when the handler calls
// bodyReleased (its job is submitted: a /v1 request may then wait minutes
// for its answer) or returns.
func (f *inflight) limit(maxBody int64) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			n := c.Request().ContentLength
			if n < 0 || n > maxBody {
				n = maxBody
			}
			tenant := tenantOf(c)
			if !f.take(tenant, n) {
				c.Response().Header().Set("Retry-After", "1")
				return errf(http.StatusTooManyRequests, "too_many_bytes_in_flight", "body",
					fmt.Sprintf("too many request bytes are being read by this server (%d bytes for this tenant, at most %d; %d in all, at most %d): try again shortly",
						f.inTenant(tenant), f.tenantMax, f.inAll(), f.max))
			}
			var once sync.Once
			release := func() { once.Do(func() { f.give(tenant, n) }) }
			defer release()
			c.Set(releaseKey, release)
			return next(c)
		}
	}
}

func (f *inflight) inTenant(tenant string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byTenant[tenant]
}

func (f *inflight) inAll() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.total
}

// bodyReleased gives a request's bytes back once its job is submitted.
func bodyReleased(c echo.Context) {
	if r, ok := c.Get(releaseKey).(func()); ok {
		r()
	}
}
