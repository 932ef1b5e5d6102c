package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/internal/httpserve"
)

// DefaultTenant owns every job when no API keys are configured.
const DefaultTenant = "default"

// tenantKey is where auth leaves the caller's tenant; the request log reads it.
const tenantKey = httpserve.TenantKey

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
