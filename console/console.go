// Package console serves the web console (chat, queue, job views) from files
// embedded in the binary, and mounts the operators' queue UI (asynqmon) and
// the dead-letter endpoints behind the admin key. Nothing is fetched from
// elsewhere: it works offline.
package console

import (
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"errors"
	"io/fs"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/chatfleet/chatfleet/jobs"
	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/webhooks"
)

//go:embed static
var static embed.FS

// Register serves the console at /console/ and redirects / there.
func Register(e *echo.Echo) {
	files, _ := fs.Sub(static, "static")
	h := http.StripPrefix("/console/", http.FileServer(http.FS(files)))
	e.GET("/console/*", echo.WrapHandler(noStore(h)))
	e.GET("/console", func(c echo.Context) error { return c.Redirect(http.StatusMovedPermanently, "/console/") })
	e.GET("/", func(c echo.Context) error { return c.Redirect(http.StatusFound, "/console/") })
}

// noStore keeps browsers from serving an old console after an upgrade.
func noStore(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
		h.ServeHTTP(w, r)
	})
}

// AdminOptions configure the operators' routes.
type AdminOptions struct {
	Key    string       // the admin key; empty: the routes are not mounted
	Queues http.Handler // the queue UI mounted at /admin/queues/ (asynqmon)
	Jobs   *jobs.Manager
	// Webhooks are the archived webhook deliveries.
	Webhooks *webhooks.Admin
	// Usage answers GET /admin/api/usage: every tenant's usage.
	Usage echo.HandlerFunc
}

// RegisterAdmin mounts /admin/queues/ (the read-only queue UI, behind HTTP
// basic auth whose password is the admin key, any user name, or the Bearer
// key) and the dead-letter endpoints GET /admin/api/archived and POST
// /admin/api/jobs/:id/rerun, the webhook dead letters GET
// /admin/api/webhooks/archived and POST /admin/api/webhooks/:id/redeliver,
// which take `Authorization: Bearer <admin key>`
// only: a browser sends cached Basic credentials with a cross-site form, never
// a Bearer header.
func RegisterAdmin(e *echo.Echo, o AdminOptions) {
	if o.Key == "" {
		return
	}
	guard := adminAuth(o.Key, false)
	if o.Queues != nil {
		page := queueUIPolicy(o.Queues)
		e.Any("/admin/queues", echo.WrapHandler(page), adminAuth(o.Key, true))
		e.Any("/admin/queues/*", echo.WrapHandler(page), adminAuth(o.Key, true))
	}
	e.GET("/admin/api/archived", func(c echo.Context) error {
		list, err := o.Jobs.ListArchived()
		if err != nil {
			return errors.Join(store.ErrUnavailable, err)
		}
		if list == nil {
			list = []jobs.Archived{}
		}
		return c.JSON(http.StatusOK, map[string]any{"jobs": list})
	}, guard)
	e.POST("/admin/api/jobs/:id/rerun", func(c echo.Context) error {
		err := o.Jobs.Rerun(c.Request().Context(), c.Param("id"))
		switch {
		case errors.Is(err, store.ErrNotFound):
			return echo.NewHTTPError(http.StatusNotFound, "no such job")
		case errors.Is(err, jobs.ErrNotArchived), errors.Is(err, store.ErrNotFailed):
			return echo.NewHTTPError(http.StatusConflict, "only an archived, failed job can be re-run")
		case err != nil:
			return err
		}
		return c.JSON(http.StatusOK, map[string]any{"job_id": c.Param("id"), "status": store.StatusQueued})
	}, guard)
	if o.Usage != nil {
		e.GET("/admin/api/usage", o.Usage, guard)
	}
	if o.Webhooks == nil {
		return
	}
	e.GET("/admin/api/webhooks/archived", func(c echo.Context) error {
		list, err := o.Webhooks.ListArchived()
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, map[string]any{"deliveries": list})
	}, guard)
	e.POST("/admin/api/webhooks/:id/redeliver", func(c echo.Context) error {
		err := o.Webhooks.Redeliver(c.Param("id"))
		if errors.Is(err, webhooks.ErrNoSuchDelivery) {
			return echo.NewHTTPError(http.StatusNotFound, "no such archived delivery")
		}
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, map[string]any{"id": c.Param("id"), "state": "pending"})
	}, guard)
}

// queueUIPolicy gives the queue UI (asynqmon: a built React page with inline
// scripts and styles) a content security policy: its own origin only.
func queueUIPolicy(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "+
			"img-src 'self' data:; font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")
		h.ServeHTTP(w, r)
	})
}

// adminAuth takes the admin key as a Bearer token, and as HTTP basic auth's
// password when basic is set (the queue UI, which a browser opens).
func adminAuth(key string, basic bool) echo.MiddlewareFunc {
	want := sha256.Sum256([]byte(key))
	ok := func(got string) bool {
		d := sha256.Sum256([]byte(got))
		return subtle.ConstantTimeCompare(d[:], want[:]) == 1
	}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := c.Request()
			if _, pass, has := r.BasicAuth(); basic && has && ok(pass) {
				return next(c)
			}
			if b, has := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); has && ok(strings.TrimSpace(b)) {
				return next(c)
			}
			if basic {
				c.Response().Header().Set("WWW-Authenticate", `Basic realm="chatfleet admin"`)
			}
			return echo.NewHTTPError(http.StatusUnauthorized, "the admin key is required")
		}
	}
}
