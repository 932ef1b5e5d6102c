package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// Hundreds of malformed and hostile requests: not one answer of 500 or more,
// the process stays up, and it keeps completing jobs.
func TestHostileInputNeverGets5xx(t *testing.T) {
	rd := testkit.StartRedis(t)
	apis, _ := fleet(t, rd, 1, 1, map[string]string{"CHATFLEET_TENANT_RATE": "0"})
	api := apis[0]
	rng := rand.New(rand.NewPCG(7, 11))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	type req struct {
		method, path, ctype string
		body                []byte
		header              map[string]string
	}
	var reqs []req
	post := func(body []byte, ctype string) {
		reqs = append(reqs, req{method: "POST", path: "/api/v1/chat/jobs", ctype: ctype, body: body})
	}
	for range 150 {
		post(randBytes(rng.IntN(400)), "application/json")
	}
	for _, b := range []string{
		`{`, `}`, `[]`, `null`, `0`, `"x"`, `{"session_id":}`, `{"session_id":"s","message":"m"`, `{"session_id":"s","message":"m"}}`,
		`{"session_id":1,"message":"m"}`, `{"session_id":"s","message":["m"]}`, `{"session_id":"s","message":{"a":1}}`,
		`{"session_id":"s","message":"m","priority":7}`, `{"session_id":"s","message":"m","metadata":"x"}`,
		`{"session_id":"s","message":"m","metadata":[]}`, `{"session_id":"s","message":"m","extra":true}`,
		`{"session_id":"` + strings.Repeat("x", 5000) + `","message":"m"}`, `{"session_id":"../../etc","message":"m"}`,
		`{"session_id":"s","message":"\u0000"}`, `{"session_id":"s","message":"m","model":"` + strings.Repeat("m", 500) + `"}`,
		"{\"session_id\":\"s\",\"message\":\"\xc3\x28\"}", "\xef\xbb\xbf{\"session_id\":\"s\",\"message\":\"bom\"}",
		`{"session_id":"s","message":"m","metadata":` + strings.Repeat(`{"a":`, 200) + `1` + strings.Repeat(`}`, 200) + `}`,
		strings.Repeat("[", 100000), `{"session_id":"s","message":"` + strings.Repeat("y", 70000) + `"}`,
		`{"session_id":"s","message":1e999}`, `{"session_id":"s","message":"m","session_id":"t"}`,
	} {
		post([]byte(b), "application/json")
		post([]byte(b), "application/json; charset=utf-16")
	}
	post(bytes.Repeat([]byte("A"), 2<<20), "application/json")
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset", ";;;", "application/json\x00"} {
		post([]byte(`{"session_id":"s","message":"m"}`), ct)
	}
	for _, p := range []string{
		"/api/v1/chat/jobs/" + strings.Repeat("j", 3000), "/api/v1/chat/jobs/%00", "/api/v1/chat/jobs/%ff%fe", "/api/v1/chat/jobs/job_%2e%2e%2f",
		"/api/v1/chat/jobs/../../../etc/passwd", "/api/v1/chat/jobs/job_00000000000000000000000000?wait=xyz",
		"/api/v1/chat/jobs/job_00000000000000000000000000?wait=99999999999999999999s", "/api/v1/chat/jobs/job_00000000000000000000000000/stream",
		"/api/v1/sessions/%00/messages", "/api/v1/sessions/" + strings.Repeat("s", 500) + "/messages", "/api/v1/sessions/a%2Fb/messages",
		"/api/v1/chat/jobs/\u00e9t\u00e9", "/api/v1//chat//jobs", "/api/v1/chat/jobs/job_00000000000000000000000000/cancel",
		"/health/queue/status?x=" + strings.Repeat("%", 100), "/%", "/api/v1/chat/jobs?" + strings.Repeat("a=1&", 2000),
	} {
		for _, m := range []string{"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"} {
			reqs = append(reqs, req{method: m, path: p})
		}
	}
	for _, h := range []map[string]string{
		{"Idempotency-Key": strings.Repeat("k", 10000)}, {"Idempotency-Key": "\x01\x02"}, {"Last-Event-ID": "-5"},
		{"Last-Event-ID": "99999999999999999999999"}, {"Authorization": "Bearer " + strings.Repeat("z", 5000)}, {"X-Request-ID": "\x00bad"},
	} {
		reqs = append(reqs, req{method: "POST", path: "/api/v1/chat/jobs", ctype: "application/json", body: []byte(`{"session_id":"s","message":"m"}`), header: h})
		reqs = append(reqs, req{method: "GET", path: "/api/v1/chat/jobs/job_00000000000000000000000000/stream", header: h})
	}

	statuses := map[int]int{}
	for _, r := range reqs {
		status, err := rawRequest(api.Addr, r.method, r.path, r.ctype, r.body, r.header)
		if err != nil {
			t.Fatalf("%s %.80s: %v", r.method, r.path, err)
		}
		statuses[status]++
		if status >= 500 {
			t.Errorf("%s %.80q (body %.60q) answered %d", r.method, r.path, r.body, status)
		}
	}
	t.Logf("%d hostile requests; statuses %v", len(reqs), statuses)
	if code, exited := api.Wait(10 * time.Millisecond); exited {
		t.Fatalf("the API exited with %d", code)
	}
	ok := submit(t, api.URL(), "after-the-storm", "still here", nil)
	if ok.Status != http.StatusAccepted {
		t.Fatalf("submit after the storm: %d %s", ok.Status, ok.Raw)
	}
	if done := waitJob(t, api.URL(), ok.Body["job_id"].(string)); content(done) != "echo: still here" {
		t.Fatalf("job after the storm: %s", done.Raw)
	}
}

// rawRequest writes an HTTP/1.1 request byte for byte (paths and headers a
// well-behaved client would refuse to send) and returns the status code.
func rawRequest(addr, method, path, ctype string, body []byte, header map[string]string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path, addr)
	if ctype != "" {
		fmt.Fprintf(&b, "Content-Type: %s\r\n", ctype)
	}
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	if _, err := conn.Write(b.Bytes()); err != nil {
		// The server may answer (413) and close before reading a huge body.
		return readStatus(conn)
	}
	return readStatus(conn)
}

func readStatus(conn net.Conn) (int, error) {
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("no status line: %w", err)
	}
	var proto string
	var code int
	if _, err := fmt.Sscanf(line, "%s %d", &proto, &code); err != nil {
		return 0, fmt.Errorf("status line %q: %w", line, err)
	}
	return code, nil
}
