package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// turnLatency is the simulated provider's time per reply in the head-of-line rows.
const turnLatency = time.Second

// headOfLine measures a chatty session beside other sessions on one worker
// with 4 slots and 1-second replies: 12 turns of one session are submitted,
// then 4 single-turn jobs of other sessions, then the worker starts. Row 1:
// the single jobs' mean finish time (from the worker's start) against the
// same 4 jobs alone. Row 2: the session's 12 turns against their work (12
// replies of 1 s). The note counts the Redis commands that name the session's
// last turn during the worker's first 8 s, while that turn waits.
func (e env) headOfLine() (singles, session result) {
	singles = result{name: "Head of line: 4 single jobs behind a 12-turn session (4 slots, 1 s replies)", unit: "s mean finish", target: "≤ 1.3",
		met: func(x float64) bool { return x <= 1.3 }}
	session = result{name: "Head of line: the 12-turn session's turns, against 12 s of work", unit: "s", target: "≤ 1.15",
		met: func(x float64) bool { return x <= 1.15 }}
	var naming []int64
	var lastSingle []float64
	for range reps {
		alone, _, _, _ := e.turnsRun(0)
		behind, last, chatty, n := e.turnsRun(12)
		singles.ours, singles.base = append(singles.ours, mean(behind)), append(singles.base, mean(alone))
		session.ours, session.base = append(session.ours, chatty), append(session.base, 12*turnLatency.Seconds())
		lastSingle = append(lastSingle, last)
		naming = append(naming, n)
	}
	singles.note = fmt.Sprintf("the last of the 4 finished after %s s (4 slots for 5 sessions: one single waits for a free slot, about one reply)", spread(lastSingle))
	session.note = fmt.Sprintf("baseline computed, not measured: 12 turns of the simulated reply's %s; Redis commands naming the session's last turn during the worker's first 8 s, while it waited: %v", turnLatency, naming)
	return singles, session
}

func mean(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t / float64(len(v))
}

// turnsRun submits `turns` turns of one session, then 4 single jobs, starts
// one worker with 4 slots and returns the single jobs' finish times and the
// last one's (from the worker's start), the session's last finish, and the
// commands that named its last turn in the worker's first 8 s.
func (e env) turnsRun(turns int) (singles []float64, lastSingle, session float64, naming int64) {
	rd := testkit.StartRedis(e.b)
	defer rd.Stop()
	api := e.start("api", e.apiBin, rd, nil)
	defer api.Stop()
	var chatty []string
	for i := range turns {
		id, err := submit(api.URL(), "chatty", "turn "+strconv.Itoa(i))
		if err != nil {
			e.b.Fatal(err)
		}
		chatty = append(chatty, id)
	}
	var single []string
	for i := range 4 {
		id, err := submit(api.URL(), "single-"+strconv.Itoa(i), "hello")
		if err != nil {
			e.b.Fatal(err)
		}
		single = append(single, id)
	}
	var named atomic.Int64
	stopCount := func() {}
	if turns > 0 {
		stopCount = countNaming(e, rd.Addr(), chatty[len(chatty)-1], &named)
	}
	start := time.Now()
	worker := e.start("worker", e.workerBin, rd, map[string]string{
		"CHATFLEET_WORKER_CONCURRENCY": "4", "CHATFLEET_SIM_LATENCY": turnLatency.String()})
	defer worker.Stop()
	if turns > 0 {
		time.AfterFunc(8*time.Second, stopCount)
	}
	finished := func(id string) float64 {
		for {
			res, err := httpc.Get(api.URL() + "/api/v1/chat/jobs/" + id + "?wait=30s")
			if err != nil {
				e.b.Fatal(err)
			}
			var j struct {
				Status     string    `json:"status"`
				FinishedAt time.Time `json:"finished_at"`
			}
			err = json.NewDecoder(res.Body).Decode(&j)
			res.Body.Close()
			if err != nil || res.StatusCode != http.StatusOK {
				e.b.Fatalf("job %s: %d %v", id, res.StatusCode, err)
			}
			if j.Status == "succeeded" {
				return j.FinishedAt.Sub(start).Seconds()
			}
			if j.Status == "failed" || j.Status == "canceled" {
				e.b.Fatalf("job %s %s", id, j.Status)
			}
		}
	}
	for _, id := range single {
		singles = append(singles, finished(id))
		lastSingle = max(lastSingle, singles[len(singles)-1])
	}
	for _, id := range chatty {
		session = finished(id)
	}
	stopCount()
	return singles, lastSingle, session, named.Load()
}

// countNaming counts, on a MONITOR connection, the commands whose text names
// id, until the returned stop is called.
func countNaming(e env, addr, id string, n *atomic.Int64) (stop func()) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		e.b.Fatal(err)
	}
	fmt.Fprint(conn, "MONITOR\r\n")
	rd := bufio.NewReaderSize(conn, 1<<20)
	if _, err := rd.ReadString('\n'); err != nil {
		e.b.Fatal(err)
	}
	go func() {
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			if strings.Contains(line, id) {
				n.Add(1)
			}
		}
	}()
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			conn.Close()
		}
	}
}
