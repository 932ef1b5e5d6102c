package tasks

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

// The task that the submit script writes must be byte for byte what asynq's
// own Enqueue writes for ChatTask, under the same keys: asynq then dequeues,
// retries, retains and inspects it as its own.
func TestAsynqMessageIsAsynqs(t *testing.T) {
	if v := asynqVersion(); v != "v0.26.0" {
		t.Fatalf("asynq %s: AsynqMessage and AsynqKeys mirror v0.26.0's storage; check them against this version's "+
			"internal/base and internal/rdb enqueue, then update this test", v)
	}
	c := testkit.StartRedis(t).Client()
	q := asynq.NewClientFromRedisClient(c)
	ctx := context.Background()
	for _, tc := range []struct {
		payload []byte
		retries int
	}{{[]byte(`{"v":1,"job_id":"j"}`), 3}, {[]byte(`{}`), 0}, {nil, 7}} {
		id := NewJobID("t", "s")
		if _, err := q.EnqueueContext(ctx, ChatTask(tc.payload, id, QueueName(PriorityNormal), tc.retries)); err != nil {
			t.Fatal(err)
		}
		key, pending, queues := AsynqKeys(QueueName(PriorityNormal), id)
		theirs, err := c.HGet(ctx, key, "msg").Bytes()
		if err != nil {
			t.Fatalf("asynq's task is not at %s: %v", key, err)
		}
		if ours := AsynqMessage(tc.payload, id, QueueName(PriorityNormal), tc.retries); !bytes.Equal(ours, theirs) {
			t.Errorf("%+v:\nours   %x\nasynq's %x", tc, ours, theirs)
		}
		if ids, _ := c.LRange(ctx, pending, 0, -1).Result(); len(ids) == 0 || ids[0] != id {
			t.Errorf("%s does not list %s: %v", pending, id, ids)
		}
		if ok, _ := c.SIsMember(ctx, queues, QueueName(PriorityNormal)).Result(); !ok {
			t.Errorf("%s lacks the queue", queues)
		}
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
