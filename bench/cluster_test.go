package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/tasks"
)

// 9. Redis Cluster. The fleet run of (3) on a 3-master cluster ÷ on one
// Redis; each master's Redis CPU per job (submit and run), which is what
// sizes a cluster, the busiest master ÷ the mean telling whether the normal
// queue's master (asynq keeps a queue on one slot) is a hot spot; and the
// Redis memory a finished job and its one-turn session hold (retention 24 h).
func (e env) cluster() (thr, hot, mem result) {
	const n = 1500
	thr = result{name: "Fleet throughput on a 3-master Redis Cluster, 1 API + 1 worker", unit: "jobs/s", target: "(reported)", higherIsBetter: true}
	hot = result{name: "Redis CPU per job on the cluster: busiest master ÷ mean of the 3", unit: "µs", target: "(reported)"}
	mem = result{name: "Redis memory per finished one-turn job with its session, 64-word reply", unit: "KB", target: "(reported)"}
	var single, shards []string
	for range reps {
		rd := testkit.StartRedis(e.b)
		c := rd.Client()
		m0, cpu0 := usedMemory(c), usedCPU(c)
		thr.base = append(thr.base, e.fleetRun(rd, n, nil))
		m1, cpu1 := usedMemory(c), usedCPU(c)
		mem.ours = append(mem.ours, (m1-m0)/n/1024)
		single = append(single, fmt.Sprintf("%.0f", (cpu1-cpu0)/n*1e6))
		rd.Stop()

		cl := testkit.StartCluster(e.b)
		masters := cl.Masters()
		queueMaster := cl.MasterOf("asynq:{" + tasks.QueueName(tasks.PriorityNormal) + "}:pending")
		before := make([]float64, len(masters))
		for i, m := range masters {
			before[i] = usedCPU(m.Client())
		}
		thr.ours = append(thr.ours, e.fleetRun(cl, n, nil))
		var busiest, total float64
		var per []string
		for i, m := range masters {
			us := (usedCPU(m.Client()) - before[i]) / n * 1e6
			busiest, total = max(busiest, us), total+us
			tag := ""
			if m == queueMaster {
				tag = " (the queue's)"
			}
			per = append(per, fmt.Sprintf("%.0f%s", us, tag))
		}
		hot.ours, hot.base = append(hot.ours, busiest), append(hot.base, total/float64(len(masters)))
		shards = append(shards, strings.Join(per, " / "))
		cl.Stop()
	}
	thr.note = "all six nodes, the API and the worker share the same 2 cores; the baseline is the same run on one Redis"
	hot.note = fmt.Sprintf("Redis CPU µs per job by master, per repetition: %s; on one Redis: %s µs per job",
		strings.Join(shards, "; "), strings.Join(single, ", "))
	mem.note = "used_memory after the jobs finished less before they were submitted, on one Redis: the job record, its event log " +
		"(64 token events coalesced), the session's order and two history messages, asynq's completed task"
	return thr, hot, mem
}

// usedCPU is the Redis server's CPU time so far in seconds (user + system).
func usedCPU(c *redis.Client) float64 {
	return infoField(c, "cpu", "used_cpu_user") + infoField(c, "cpu", "used_cpu_sys")
}

// usedMemory is the Redis server's used_memory in bytes.
func usedMemory(c *redis.Client) float64 { return infoField(c, "memory", "used_memory") }

func infoField(c *redis.Client, section, field string) float64 {
	info, err := c.Info(context.Background(), section).Result()
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
