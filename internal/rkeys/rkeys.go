// Package rkeys names every Redis key and channel chatfleet writes (asynq
// names its own). Nothing else builds a key.
package rkeys

import "strconv"

const prefix = "chatfleet:"

// Job is a job's record (hash).
func Job(id string) string { return prefix + "job:" + id }

// Events is a job's event log (list; entry i is event seq i+1).
func Events(id string) string { return prefix + "job:" + id + ":events" }

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

// Tenant names never contain ':' and session ids never contain a newline
// (both are validated), so tenant + session cannot collide.

// SessionOrder lists a session's unfinished jobs in submission order.
func SessionOrder(tenant, session string) string {
	return prefix + "session:" + tenant + ":" + session + ":order"
}

// History is a session's conversation (list of JSON messages).
func History(tenant, session string) string {
	return prefix + "session:" + tenant + ":" + session + ":history"
}

// Breaker namespaces the keys of a provider's shared circuit breaker state.
func Breaker(name string) string { return prefix + "breaker:" + name }

// BreakerProbe is held by the one worker that probes a half-open provider.
func BreakerProbe(name string) string { return prefix + "breaker:" + name + ":probe" }

// TenantJobs holds a tenant's unfinished jobs (sorted set scored by creation
// time in ms), for the per-tenant limit.
func TenantJobs(tenant string) string { return prefix + "tenant:" + tenant + ":jobs" }

// TenantRate is the rate limiter's key of a tenant.
func TenantRate(tenant string) string { return prefix + "tenant:" + tenant + ":rate" }

// Provider keys share the hash tag {provider:<name>}, so that one script may
// touch all of them on a Redis Cluster.

// ProviderLeases holds the in-flight calls to a provider, fleet-wide (sorted
// set of lease tokens scored by their expiry in ms).
func ProviderLeases(name string) string { return prefix + "{provider:" + name + "}:leases" }

// ProviderRPM is the requests-per-minute limiter's state of a provider.
func ProviderRPM(name string) string { return prefix + "{provider:" + name + "}:rpm" }

// ProviderTPM is the tokens-per-minute limiter's state of a provider.
func ProviderTPM(name string) string { return prefix + "{provider:" + name + "}:tpm" }

// ProviderPause exists while a provider asked the fleet to wait (Retry-After).
func ProviderPause(name string) string { return prefix + "{provider:" + name + "}:pause" }

// ProviderAdaptive holds a provider's learned concurrency limit (hash).
func ProviderAdaptive(name string) string { return prefix + "{provider:" + name + "}:adaptive" }

// ProviderWaiting holds the high-priority calls waiting for the provider
// (sorted set scored by expiry in ms): lower priorities let them go first.
func ProviderWaiting(name string) string { return prefix + "{provider:" + name + "}:waiting" }

// ProviderSaturated exists for a short while after a call had to wait for
// the provider's capacity, for the queue status advice.
func ProviderSaturated(name string) string { return prefix + "{provider:" + name + "}:saturated" }

// Leases holds the running attempts' heartbeat leases (sorted set of
// "<job id>:<attempt>" scored by expiry in ms); an expired one is taken over.
func Leases() string { return prefix + "leases" }

// Unfinished indexes every unfinished job for the reconciler (sorted set of
// "<tenant>\n<session>\n<job id>" scored by its next check in ms).
func Unfinished() string { return prefix + "unfinished" }

// UnfinishedMember is a job's entry in Unfinished.
func UnfinishedMember(tenant, session, id string) string { return tenant + "\n" + session + "\n" + id }

// LeaseMember is an attempt's entry in Leases.
func LeaseMember(id string, attempt int) string { return id + ":" + strconv.Itoa(attempt) }

// TenantStreams holds a tenant's open streams across API processes (sorted
// set of stream ids scored by lease expiry in ms), for its stream cap.
func TenantStreams(tenant string) string { return prefix + "tenant:" + tenant + ":streams" }

// StreamToken maps a short-lived stream token to the tenant and job it lets a
// page follow (EventSource cannot send an Authorization header).
func StreamToken(token string) string { return prefix + "stream-token:" + token }

// Response is a /v1/responses response's own fields (hash): its tenant,
// input, conversation, instructions and settings; its job holds the rest.
func Response(id string) string { return prefix + "response:" + id }
