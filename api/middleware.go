package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/internal/httpserve"
)

// DefaultTenant owns every job when no API keys are configured.
const DefaultTenant = "default"

// tenantKey is where auth leaves the caller's tenant; the request log reads it.
const tenantKey = httpserve.TenantKey

// keyDigestKey is where auth leaves the SHA-256 of the caller's key (hex;
// absent with no keys configured): a stream token is bound to it.
const keyDigestKey = "key_digest"

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
	return k.tenantOfDigest(sha256.Sum256([]byte(key)))
}

// tenantOfDigest is the tenant of a key given by its digest.
func (k *keyring) tenantOfDigest(d [32]byte) (string, bool) {
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

// stillValid reports whether the key a stream token was issued to (its
// digest, hex) is still configured for tenant. With no keys configured,
// every token is.
func (k *keyring) stillValid(digest, tenant string) bool {
	if len(k.digests) == 0 {
		return true
	}
	raw, err := hex.DecodeString(digest)
	if err != nil || len(raw) != 32 {
		return false
	}
	t, ok := k.tenantOfDigest([32]byte(raw))
	return ok && t == tenant
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
			d := sha256.Sum256([]byte(strings.TrimSpace(key)))
			c.Set(keyDigestKey, hex.EncodeToString(d[:]))
			return next(c)
		}
	}
}

func tenantOf(c echo.Context) string {
	t, _ := c.Get(tenantKey).(string)
	return t
}
