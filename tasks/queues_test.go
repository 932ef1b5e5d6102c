package tasks

import (
	"strings"
	"testing"
)

func TestPriorityOfQueue(t *testing.T) {
	for _, p := range Priorities {
		if got := PriorityOfQueue(QueueName(p)); got != p {
			t.Errorf("PriorityOfQueue(%q) = %q", QueueName(p), got)
		}
		for q := range QueueSet(4) {
			if strings.HasPrefix(q, QueueName(p)+"-") && PriorityOfQueue(q) != p {
				t.Errorf("PriorityOfQueue(%q) = %q, want %q", q, PriorityOfQueue(q), p)
			}
		}
	}
	if got := PriorityOfQueue("other"); got != PriorityNormal {
		t.Errorf("PriorityOfQueue(other) = %q", got)
	}
}
