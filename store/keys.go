// Package store keeps chatfleet's own state in Redis: job records, the
// per-session order of jobs and the conversation history. asynq keeps the queue.
package store

// Every Redis key chatfleet writes is built here and nowhere else.

const prefix = "chatfleet:"

func jobKey(id string) string { return prefix + "job:" + id }

// Tenants and session ids never contain a newline; tenant names never contain ':'
// (config validates them), so tenant + session cannot collide.
func sessionOrderKey(tenant, session string) string {
	return prefix + "session:" + tenant + ":" + session + ":order"
}

func historyKey(tenant, session string) string {
	return prefix + "session:" + tenant + ":" + session + ":history"
}

func eventsKey(id string) string { return prefix + "job:" + id + ":events" }

// LiveChannel is the pub/sub channel on which a job's events go out live.
func LiveChannel(id string) string { return prefix + "job:" + id + ":live" }

// JobIDOfChannel returns the job id of a LiveChannel name.
func JobIDOfChannel(ch string) (string, bool) {
	const head, tail = prefix + "job:", ":live"
	if len(ch) <= len(head)+len(tail) || ch[:len(head)] != head || ch[len(ch)-len(tail):] != tail {
		return "", false
	}
	return ch[len(head) : len(ch)-len(tail)], true
}
