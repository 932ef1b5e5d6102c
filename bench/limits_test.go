package bench

import (
	"strings"
	"testing"
)

// The prose under the table explains the targets this run missed, with this
// run's figures, and nothing about the targets it met.
func TestTheReportExplainsTheTargetsThisRunMissed(t *testing.T) {
	ratio := func(x float64) bool { return x >= 0.5 }
	rs := []result{
		{name: "Fleet throughput, 64-word replies", unit: "jobs/s", ours: []float64{40}, base: []float64{100}, met: ratio},
		{name: "Submit throughput, 32 clients", unit: "jobs/s", ours: []float64{90}, base: []float64{100}, met: ratio},
		{name: "Redis commands sent per job, 64-word reply", unit: "commands", ours: []float64{5.2, 5.3, 5.25}},
		{name: "Redis commands run inside scripts per job", unit: "commands", ours: []float64{71}, target: "(reported)"},
	}
	out := string(report(rs, nil, 0))
	prose := out[strings.Index(out, "## What limits the missed targets"):]
	if !strings.Contains(prose, "- Fleet throughput, 64-word replies: ") || !strings.Contains(prose, "sent 5.25 commands and ran 71 inside scripts") {
		t.Fatalf("the missed fleet target is not explained with this run's figures:\n%s", prose)
	}
	if strings.Contains(prose, "Submit throughput") || strings.Contains(prose, "Redis commands run inside scripts per job:") {
		t.Fatalf("the prose explains targets this run met or did not have:\n%s", prose)
	}
	if !strings.Contains(out, "| Submit throughput, 32 clients | 90 jobs/s (90–90) | 100 jobs/s (100–100) | 0.90 |  | yes |") {
		t.Fatalf("the met row is not reported as met:\n%s", out)
	}
	if strings.Contains(string(report(rs[1:], nil, 0)), "What limits") {
		t.Fatal("a run that missed nothing still has the section")
	}
}
