package api

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

// The bytes limiter on its own: requests held mid-handler count by their
// Content-Length, per tenant and in all; one over either limit is refused
// 429 too_many_bytes_in_flight with Retry-After, the others keep their
// service, and the bytes go back when the job is submitted.
func TestInflightBytesAreBoundedPerTenantAndInAll(t *testing.T) {
	f := newInflight(30, 20)
	e := echo.New()
	e.HTTPErrorHandler = handleError
	hold := map[string]chan struct{}{}
	for _, k := range []string{"a1", "a2", "b1", "c1", "lone"} {
		hold[k] = make(chan struct{})
	}
	entered := make(chan string, 10)
	setTenant := func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error { c.Set(tenantKey, c.Request().Header.Get("X-Tenant")); return next(c) }
	}
	e.POST("/x/:name", func(c echo.Context) error {
		name := c.Param("name")
		entered <- name
		<-hold[name]
		bodyReleased(c) // the job is submitted; the answer may take long
		<-hold[name]
		return c.NoContent(http.StatusAccepted)
	}, setTenant, f.limit(10))
	srv := httptest.NewServer(e)
	defer srv.Close()
	send := func(name, tenant string, n int) chan *http.Response {
		out := make(chan *http.Response, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/x/"+name, strings.NewReader(strings.Repeat("x", n)))
			req.Header.Set("X-Tenant", tenant)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				close(out)
				return
			}
			out <- resp
		}()
		return out
	}
	admitted := func(name string) {
		t.Helper()
		select {
		case got := <-entered:
			if got != name {
				t.Fatalf("%s entered, want %s", got, name)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s was not admitted", name)
		}
	}
	refused := func(r chan *http.Response, what string) {
		t.Helper()
		resp := <-r
		if resp == nil || resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("%s: %v", what, resp)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "too_many_bytes_in_flight") {
			t.Fatalf("%s: %s", what, b)
		}
	}
	a1 := send("a1", "acme", 10)
	admitted("a1")
	a2 := send("a2", "acme", 10)
	admitted("a2")
	refused(send("a3", "acme", 5), "acme past its 20 bytes")
	b1 := send("b1", "beta", 10)
	admitted("b1")
	refused(send("c0", "cool", 1), "cool past the 30 bytes in all")
	// acme's first job is submitted: its bytes go back while it waits.
	hold["a1"] <- struct{}{}
	c1 := send("c1", "cool", 10)
	admitted("c1")
	for _, k := range []string{"a2", "b1", "c1"} {
		hold[k] <- struct{}{}
	}
	close(hold["a1"])
	for _, k := range []string{"a2", "b1", "c1"} {
		close(hold[k])
	}
	for _, r := range []chan *http.Response{a1, a2, b1, c1} {
		if resp := <-r; resp == nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("an admitted request: %v", resp)
		}
	}
	if f.inAll() != 0 || len(f.byTenant) != 0 {
		t.Fatalf("bytes left in flight: %d %v", f.inAll(), f.byTenant)
	}
	// A lone body larger than a limit still passes: nothing else is in flight.
	if !f.take("lone", 100) {
		t.Fatal("a lone large body was refused")
	}
}
