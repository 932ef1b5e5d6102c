package api

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// tenantLimiter limits each tenant's requests per second with redis_rate's
// GCRA, in Redis, so the limit holds across every API process.
type tenantLimiter struct {
	lim   *redis_rate.Limiter
	limit redis_rate.Limit
}

func newTenantLimiter(rdb redis.UniversalClient, rate, burst int) *tenantLimiter {
	if rate <= 0 {
		return &tenantLimiter{}
	}
	return &tenantLimiter{lim: redis_rate.NewLimiter(rdb), limit: redis_rate.Limit{Rate: rate, Burst: max(burst, 1), Period: time.Second}}
}

func (l *tenantLimiter) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	if l.lim == nil {
		return next
	}
	return func(c echo.Context) error {
		res, err := l.lim.Allow(c.Request().Context(), rkeys.TenantRate(tenantOf(c)), l.limit)
		if err != nil {
			// Fail open: an unreachable Redis shows up in the handler as a 503.
			zerolog.Ctx(c.Request().Context()).Warn().Err(err).Msg("rate limiter unavailable")
			return next(c)
		}
		if res.Allowed == 0 {
			wait := int(math.Ceil(res.RetryAfter.Seconds()))
			c.Response().Header().Set("Retry-After", strconv.Itoa(max(wait, 1)))
			return errf(http.StatusTooManyRequests, "rate_limited", "", "too many requests for this tenant; slow down")
		}
		return next(c)
	}
}
