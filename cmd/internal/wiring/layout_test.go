package wiring

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// golist runs `go list` in the module and returns its output lines.
func golist(t *testing.T, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Dir = "../../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, out)
	}
	return strings.Fields(string(out))
}

// The layout's rules: only the mains read the configuration; the worker does
// not link the HTTP API; the API reaches the queue only through the job
// lifecycle; the worker's pipeline changes a job only through it.
func TestLayoutRules(t *testing.T) {
	const mod = "github.com/chatfleet/chatfleet/"
	if deps := golist(t, "-deps", "./cmd/worker"); slices.Contains(deps, mod+"api") {
		t.Error("the worker binary links the api package")
	}
	for _, pkg := range []string{"store", "llm", "orchestration", "stream", "health", "jobs", "api"} {
		if deps := golist(t, "-deps", "./"+pkg); slices.Contains(deps, mod+"config") {
			t.Errorf("%s depends on config; map the configuration in cmd/", pkg)
		}
	}
	if imports := golist(t, "-f", `{{join .Imports " "}}`, "./api"); slices.Contains(imports, "github.com/hibiken/asynq") {
		t.Error("api imports asynq; it must go through the jobs package")
	}
	if imports := golist(t, "-f", `{{join .Imports " "}}`, "./orchestration"); slices.Contains(imports, mod+"store") {
		t.Error("orchestration imports store; a job's transitions go through jobs (jobs.Attempt)")
	}
}

func TestClosersRunLastInFirstOut(t *testing.T) {
	var c Closers
	var order []int
	for i := range 3 {
		c.AddFunc(func() { order = append(order, i) })
	}
	if err := c.Close(); err != nil || !slices.Equal(order, []int{2, 1, 0}) {
		t.Fatalf("order %v, err %v", order, err)
	}
	if err := c.Close(); err != nil || len(order) != 3 {
		t.Fatal("a second Close ran the steps again")
	}
}
