package bench

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatfleet/chatfleet/internal/llmfake"
	"github.com/chatfleet/chatfleet/internal/testkit"
)

// overheadBody is a non-streamed Chat Completions request of a few words;
// streamedBody, the same request streamed.
const (
	overheadBody = `{"model":"fake-model","messages":[{"role":"user","content":"hi there"}]}`
	streamedBody = `{"model":"fake-model","stream":true,"messages":[{"role":"user","content":"hi there"}]}`
)

// post sends body to url with the fake upstream's key, which the fleet's API
// (no keys configured) ignores, so both paths get the same request.
func post(client *http.Client, url, body string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+llmfake.Key)
	return client.Do(req)
}

// firstTokens sends n streamed requests one after another and returns the
// time from each request to the first chunk with text.
func firstTokens(e env, url string, n int) []time.Duration {
	client := &http.Client{}
	defer client.CloseIdleConnections()
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		res, err := post(client, url, streamedBody)
		if err != nil {
			e.b.Error(err)
			return out
		}
		var took time.Duration
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			line := sc.Text()
			if took == 0 && strings.HasPrefix(line, "data: ") && strings.Contains(line, `"content":"`) && !strings.Contains(line, `"content":""`) {
				took = time.Since(start)
			}
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK || took == 0 {
			e.b.Errorf("%s: %d, no text streamed", url, res.StatusCode)
			return out
		}
		out = append(out, took)
	}
	return out
}

// latencies sends n requests over conns connections, each as soon as the
// connection's previous one is answered (as wrk does), and returns their
// times.
func latencies(e env, url string, conns, n int) []time.Duration {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
	defer client.CloseIdleConnections()
	out := make([]time.Duration, 0, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			for range n / conns {
				start := time.Now()
				res, err := post(client, url, overheadBody)
				if err != nil {
					e.b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					e.b.Errorf("%s: %d", url, res.StatusCode)
					return
				}
				mu.Lock()
				out = append(out, time.Since(start))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// idleOverhead is what an idle fleet (one API, one worker) adds to a
// non-streamed /v1/chat/completions over the same request sent straight to
// the upstream (a fake OpenAI-compatible server answering at once), at one
// and eight connections: the fleet's percentile less the direct call's,
// both measured in the same repetition.
func (e env) idleOverhead() []result {
	type key struct {
		conns int
		p     float64
	}
	rows := map[key]*result{}
	var order []key
	for _, conns := range []int{1, 8} {
		for _, p := range []float64{0.50, 0.95, 0.99} {
			k := key{conns, p}
			r := &result{name: fmt.Sprintf("Idle fleet's overhead over the direct call, non-streamed /v1, %d connection(s), p%.0f", conns, p*100),
				unit: "ms", target: "(reported)"}
			switch {
			case conns == 1 && p == 0.50:
				r.target, r.check = "≤ 5 ms", func(ours, _ float64) bool { return ours <= 5 }
			case conns == 1 && p == 0.99:
				r.target, r.check = "≤ 10 ms", func(ours, _ float64) bool { return ours <= 10 }
			}
			rows[k] = r
			order = append(order, k)
		}
	}
	// conns 0: the streamed request's first token, one connection.
	for _, p := range []float64{0.50, 0.99} {
		k := key{0, p}
		r := &result{name: fmt.Sprintf("Idle fleet's first token after the direct call's, streamed /v1, 1 connection, p%.0f", p*100),
			unit: "ms", target: "(reported)"}
		if p == 0.50 {
			r.target, r.check = "≤ 5 ms", func(ours, _ float64) bool { return ours <= 5 }
		}
		rows[k] = r
		order = append(order, k)
	}
	for range reps {
		fake := llmfake.NewOpenAI(e.b)
		rd := testkit.StartRedis(e.b)
		env := map[string]string{"CHATFLEET_LLM_PROVIDER": "openai", "CHATFLEET_LLM_BASE_URL": fake.URL(),
			"CHATFLEET_LLM_MODEL": "fake-model", "CHATFLEET_LLM_API_KEY": llmfake.Key}
		w := e.start("worker", e.workerBin, rd, env)
		a := e.start("api", e.apiBin, rd, env)
		latencies(e, a.URL()+"/v1/chat/completions", 1, 20) // warm both paths up
		direct := firstTokens(e, fake.URL()+"/chat/completions", 200)
		fleet := firstTokens(e, a.URL()+"/v1/chat/completions", 200)
		for _, p := range []float64{0.50, 0.99} {
			r := rows[key{0, p}]
			r.ours = append(r.ours, percentile(fleet, p)-percentile(direct, p))
			r.base = append(r.base, percentile(direct, p))
		}
		for _, conns := range []int{1, 8} {
			n := 200 * conns
			direct := latencies(e, fake.URL()+"/chat/completions", conns, n)
			fleet := latencies(e, a.URL()+"/v1/chat/completions", conns, n)
			for _, p := range []float64{0.50, 0.95, 0.99} {
				r := rows[key{conns, p}]
				r.ours = append(r.ours, percentile(fleet, p)-percentile(direct, p))
				r.base = append(r.base, percentile(direct, p))
			}
		}
		a.Stop()
		w.Stop()
		rd.Stop()
	}
	var out []result
	for i, k := range order {
		r := *rows[k]
		switch {
		case i == 0:
			r.note = "ours: the fleet's percentile less the direct call's, in the same repetition (200 requests a connection, each sent when the last was answered); baseline: the direct call's percentile"
		case k.conns == 0 && k.p == 0.50:
			r.note = "ours: the time from request to the first chunk with text, the fleet's percentile less the direct call's, in the same repetition (200 streamed requests, one after another); baseline: the direct call's percentile"
		}
		out = append(out, r)
	}
	return out
}

// BenchmarkIdleOverhead runs only the idle-overhead rows (make bench runs
// them in the report).
func BenchmarkIdleOverhead(b *testing.B) {
	e := fleetEnv(b)
	for _, r := range e.idleOverhead() {
		b.Logf("%s: %.2f %s (%s), direct %.2f %s", r.name, median(r.ours), r.unit, spread(r.ours), median(r.base), r.unit)
	}
}
