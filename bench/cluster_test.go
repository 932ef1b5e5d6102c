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
// Redis, with each priority on one queue and spread over three
// (CHATFLEET_QUEUE_SPREAD=3); each master's Redis CPU per job (submit and
// run), which is what sizes a cluster: the busiest master ÷ the mean tells
// whether a queue's master (asynq keeps a queue on one slot) is a hot spot;
// and the Redis memory a finished job and its one-turn session hold.
func (e env) cluster() []result {
	const n = 1500
	thr1 := result{name: "Fleet throughput on a 3-master Redis Cluster ÷ one Redis", unit: "jobs/s", target: "(reported)", higherIsBetter: true}
	thr3 := result{name: "The same with each priority spread over 3 queues", unit: "jobs/s", target: "(reported)", higherIsBetter: true}
	hot1 := result{name: "Cluster, Redis CPU per job: busiest master ÷ mean of the 3", unit: "µs", target: "(reported)"}
	hot3 := result{name: "The same with each priority spread over 3 queues", unit: "µs", target: "(reported)"}
	mem := result{name: "Redis memory per finished one-turn job with its session, 64-word reply", unit: "KB", target: "(reported)"}
	var single, shards1, shards3 []string
	for range reps {
		rd := testkit.StartRedis(e.b)
		c := rd.Client()
		m0, cpu0 := usedMemory(c), usedCPU(c)
		jps := e.fleetRun(rd, n, nil)
		thr1.base, thr3.base = append(thr1.base, jps), append(thr3.base, jps)
		m1, cpu1 := usedMemory(c), usedCPU(c)
		mem.ours = append(mem.ours, (m1-m0)/n/1024)
		single = append(single, fmt.Sprintf("%.0f", (cpu1-cpu0)/n*1e6))
		rd.Stop()

		for _, spread := range []int{1, 3} {
			thr, hot, shards := &thr1, &hot1, &shards1
			if spread == 3 {
				thr, hot, shards = &thr3, &hot3, &shards3
			}
			cl := testkit.StartCluster(e.b)
			masters := cl.Masters()
			queueMasters := map[*testkit.Redis]bool{}
			for q := range tasks.QueueSet(spread) {
				if strings.HasPrefix(q, tasks.QueueName(tasks.PriorityNormal)) {
					queueMasters[cl.MasterOf("asynq:{"+q+"}:pending")] = true
				}
			}
			before := make([]float64, len(masters))
			for i, m := range masters {
				before[i] = usedCPU(m.Client())
			}
			thr.ours = append(thr.ours, e.fleetRun(cl, n, map[string]string{"CHATFLEET_QUEUE_SPREAD": strconv.Itoa(spread)}))
			var busiest, total float64
			var per []string
			for i, m := range masters {
				us := (usedCPU(m.Client()) - before[i]) / n * 1e6
				busiest, total = max(busiest, us), total+us
				tag := ""
				if queueMasters[m] {
					tag = "*"
				}
				per = append(per, fmt.Sprintf("%.0f%s", us, tag))
			}
			hot.ours, hot.base = append(hot.ours, busiest), append(hot.base, total/float64(len(masters)))
			*shards = append(*shards, strings.Join(per, " / "))
			cl.Stop()
		}
	}
	thr1.note = "1 API and 1 worker; all six nodes, the API and the worker share the same 2 cores; the baseline is the same run on one Redis"
	hot1.note = fmt.Sprintf("Redis CPU µs per job (submit and run) by master, per repetition, * the normal queue's master: %s; on one Redis: %s µs per job",
		strings.Join(shards1, "; "), strings.Join(single, ", "))
	hot3.note = fmt.Sprintf("by master, * a normal queue's master: %s", strings.Join(shards3, "; "))
	mem.note = "used_memory after the jobs finished less before they were submitted, on one Redis: the job record, its event log " +
		"(64 token events coalesced), the session's order and two history messages, asynq's completed task (all kept 24 h)"
	return []result{thr1, thr3, hot1, hot3, mem}
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
