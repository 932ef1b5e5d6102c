package tasks

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// The dispatcher counts the ready tasks in asynq's pending list by its name:
// the name must be the one asynq's own Enqueue writes to.
func TestAsynqPendingKeyIsAsynqs(t *testing.T) {
	if v := asynqVersion(); v != "v0.26.0" {
		t.Fatalf("asynq %s: AsynqPendingKey mirrors v0.26.0's storage; check it against this version's "+
			"internal/base, then update this test", v)
	}
	c := testkit.StartRedis(t).Client()
	q := asynq.NewClientFromRedisClient(c)
	ctx := context.Background()
	for _, queue := range []string{QueueName(PriorityNormal), SpreadQueue(QueueName(PriorityHigh), NewJobID("t", "s"), 4)} {
		id := NewJobID("t", "s")
		if _, err := q.EnqueueContext(ctx, ChatTask([]byte(`{}`), id, queue, 3)); err != nil {
			t.Fatal(err)
		}
		if ids, _ := c.LRange(ctx, AsynqPendingKey(queue), 0, -1).Result(); len(ids) != 1 || ids[0] != id {
			t.Errorf("%s does not list %s: %v", AsynqPendingKey(queue), id, ids)
		}
	}
}

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

// asynqVersion is the asynq version go.mod requires.
func asynqVersion() string {
	raw, err := os.ReadFile("../go.mod")
	if err != nil {
		return "unknown: " + err.Error()
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/hibiken/asynq" {
			return f[1]
		}
	}
	return "unknown"
}
