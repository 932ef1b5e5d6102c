// Package rkeys names every Redis key and channel chatfleet writes (asynq
// names its own). Nothing else builds a key.
//
// Keys are laid out for Redis Cluster, where one script may touch only keys
// of one hash slot: a session's keys and its jobs' keys share a hash tag, the
// tag of one of Buckets buckets (see Bucket), and so do the per-bucket indexes
// that the job scripts update (leases, unfinished jobs). Per-provider keys
// share {provider:<name>}. Every other key is alone in its scripts.
package rkeys

import (
	"hash/fnv"
	"strconv"
	"strings"
)

const prefix = "chatfleet:"

// Buckets is the number of hash tags that jobs and sessions are spread over.
// Each bucket's tag hashes to the middle of its 1/Buckets of the slot space,
// so a cluster whose masters hold even slot ranges gets an even share of
// buckets; 64 lets load spread over up to about 32 masters. The rescuer and
// the reconciler walk every bucket's index each round.
const Buckets = 64

// bucketTags[i] is the hash tag of bucket i.
var bucketTags = func() [Buckets]string {
	var tags [Buckets]string
	const width = 16384 / Buckets
	for i := range tags {
		lo := i*width + width/4 // within the middle half of the bucket's range
		for n := 0; ; n++ {
			t := "b" + strconv.Itoa(i) + "." + strconv.Itoa(n)
			if s := Slot(t); s >= lo && s < lo+width/2 {
				tags[i] = t
				break
			}
		}
	}
	return tags
}()

// Slot is the Redis Cluster hash slot of a key (CRC16/XMODEM of its hash tag,
// or of the whole key when it has none, modulo 16384).
func Slot(key string) int {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// SessionBucket is the bucket of a session's keys and of its jobs.
func SessionBucket(tenant, session string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(tenant))
	_, _ = h.Write([]byte{'\n'})
	_, _ = h.Write([]byte(session))
	return int(h.Sum32() % Buckets)
}

// IDAlphabet is the job ids' base32 alphabet.
const IDAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// IDBucketChars are the two characters that put a job id ("job_" + base32)
// in a bucket: the id's 5th and 6th characters.
func IDBucketChars(bucket int) string {
	return string([]byte{IDAlphabet[bucket/32], IDAlphabet[bucket%32]})
}

// Bucket is the bucket of a job id: the one its 5th and 6th characters name
// for a job id, else a hash of the id (ids that never share a script with a
// session, in tests).
func Bucket(id string) int {
	if len(id) >= 6 && strings.HasPrefix(id, "job_") {
		hi, lo := strings.IndexByte(IDAlphabet, id[4]), strings.IndexByte(IDAlphabet, id[5])
		if hi >= 0 && lo >= 0 {
			return (hi*32 + lo) % Buckets
		}
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % Buckets)
}

func tagged(bucket int) string { return prefix + "{" + bucketTags[bucket] + "}:" }

// Job is a job's record (hash).
func Job(id string) string { return tagged(Bucket(id)) + "job:" + id }

// Events is a job's event log (list; entry i is event seq i+1).
func Events(id string) string { return tagged(Bucket(id)) + "job:" + id + ":events" }

// Ahead holds a job's events that went out live before its log had them
// (hash: "<fence>:<seq>" -> log entry), so that whoever writes the log next
// (the attempt's own sync, its finish, a cancel, a takeover) puts them in first,
// at the seqs followers saw them under.
func Ahead(id string) string { return tagged(Bucket(id)) + "job:" + id + ":ahead" }

// LiveChannel is the (sharded) pub/sub channel on which a job's events go out live.
func LiveChannel(id string) string { return tagged(Bucket(id)) + "job:" + id + ":live" }

// JobIDOfChannel returns the job id of a LiveChannel name.
func JobIDOfChannel(ch string) (string, bool) {
	const mid, tail = "}:job:", ":live"
	i := strings.Index(ch, mid)
	if !strings.HasPrefix(ch, prefix+"{") || i < 0 || !strings.HasSuffix(ch, tail) || len(ch) <= i+len(mid)+len(tail) {
		return "", false
	}
	return ch[i+len(mid) : len(ch)-len(tail)], true
}

// Tenant names never contain ':' and session ids never contain a newline
// (both are validated), so tenant + session cannot collide.

// SessionOrder lists a session's unfinished jobs in submission order.
func SessionOrder(tenant, session string) string {
	return tagged(SessionBucket(tenant, session)) + "session:" + tenant + ":" + session + ":order"
}

// History is a session's conversation (list of JSON messages).
func History(tenant, session string) string {
	return tagged(SessionBucket(tenant, session)) + "session:" + tenant + ":" + session + ":history"
}

// Leases holds a bucket's running attempts' heartbeat leases (sorted set of
// "<job id>:<fence>" scored by expiry in ms, by Redis's clock); an expired
// one is taken over.
func Leases(bucket int) string { return tagged(bucket) + "leases" }

// WebhookOutbox holds a bucket's ended jobs whose webhooks are still to be
// enqueued (sorted set of job ids scored with when a sweep takes them up):
// the job's finish adds the entry in the same script, so no ended job loses
// its webhook to a crash between the two.
func WebhookOutbox(bucket int) string { return tagged(bucket) + "webhooks" }

// Listing indexes a tenant's jobs of a bucket, newest last (sorted set of
// job ids scored by creation time in ms), for the job list: written with
// the record, in its slot.
func Listing(bucket int, tenant string) string { return tagged(bucket) + "list:" + tenant }

// Usage is a tenant's token ledger for one month ("2026-11") in one bucket
// (hash of "<day>|<model>|<r, p or c>" → requests, prompt and completion
// tokens): the finish script of a job of the bucket adds to it, in the job's
// slot; a month's usage is the sum over the buckets.
func Usage(bucket int, tenant, month string) string {
	return tagged(bucket) + "usage:" + month + ":" + tenant
}

// Unfinished indexes a bucket's unfinished jobs for the reconciler (sorted
// set of "<tenant>\n<session>\n<job id>" scored by its next check in ms).
func Unfinished(bucket int) string { return tagged(bucket) + "unfinished" }

// RunnerChannel is the channel a worker process listens on for the jobs it
// runs that have just gained a live follower (the job id is the message).
func RunnerChannel(runner string) string { return prefix + "runner:" + runner }

// FleetHistory is the hash of the fleet's figures for one slot of
// health.HistorySlot (its start in Unix seconds); every slot's key shares
// one hash tag so the 15 minutes are read from one node.
func FleetHistory(slot int64) string {
	return prefix + "{fleet-history}:" + strconv.FormatInt(slot, 10)
}

// InterruptPrefix starts a message on a runner's channel that asks it to
// cancel its run of the job named after it (a plain message names a job
// that gained a follower).
const InterruptPrefix = "interrupt:"

// Idempotency points a tenant's Idempotency-Key at the job it made, so that
// the key reused with another session (hence another job id) is a conflict.
func Idempotency(tenant, keyHash string) string { return prefix + "idem:" + tenant + ":" + keyHash }

// Breaker namespaces the keys of a provider's shared circuit breaker state.
func Breaker(name string) string { return prefix + "breaker:" + name }

// BreakerChanged is the pub/sub channel on which a change of a provider's
// shared breaker state is announced, so that processes re-read it at once.
func BreakerChanged(name string) string { return prefix + "breaker:" + name + ":changed" }

// BreakerProbe is held by the one worker that probes a half-open provider.
func BreakerProbe(name string) string { return prefix + "breaker:" + name + ":probe" }

// Budget is a tenant's spend and reservations in a budget period ("2026-11-30"
// or "2026-11"): a hash of `spent`, `reserved` and one `r:<job id>` field per
// job whose reservation is not settled yet. A tenant's periods share a hash
// tag, so that one script may read two of them.
func Budget(tenant, period string) string { return prefix + "{budget:" + tenant + "}:" + period }

// BudgetSettle indexes a bucket's ended jobs whose budget reservation is
// still to be settled (sorted set of job ids by end time, ms).
func BudgetSettle(bucket int) string { return tagged(bucket) + "settle" }

// TenantJobs holds a tenant's unfinished jobs (sorted set scored by creation
// time in ms), for the per-tenant limit.
func TenantJobs(tenant string) string { return prefix + "tenant:" + tenant + ":jobs" }

// TenantRate is the rate limiter's key of a tenant.
func TenantRate(tenant string) string { return prefix + "tenant:" + tenant + ":rate" }

// A tenant's files and batches share the hash tag {files:<tenant>}: a
// file's chunks, a batch's results and their indexes change together.
func tenantFiles(tenant string) string { return prefix + "{files:" + tenant + "}:" }

// File is a stored file's metadata (hash); FileData its content, in chunks
// (list); Files the tenant's files (sorted set of ids by creation, ms).
func File(tenant, id string) string     { return tenantFiles(tenant) + "file:" + id }
func FileData(tenant, id string) string { return tenantFiles(tenant) + "file:" + id + ":data" }
func Files(tenant string) string        { return tenantFiles(tenant) + "files" }

// Batch is a batch's record (hash); BatchResults its answered lines (hash:
// line -> output or error line); BatchRunning its lines that are jobs now
// (hash: line -> job id); Batches the tenant's batches (sorted set of ids by
// creation, ms).
func Batch(tenant, id string) string        { return tenantFiles(tenant) + "batch:" + id }
func BatchResults(tenant, id string) string { return tenantFiles(tenant) + "batch:" + id + ":results" }
func BatchRunning(tenant, id string) string { return tenantFiles(tenant) + "batch:" + id + ":running" }
func Batches(tenant string) string          { return tenantFiles(tenant) + "batches" }

// BatchesActive holds the batches not yet ended, fleet-wide ("<tenant>\n<id>"
// in a set); BatchLock is the claim of the API process that runs a batch.
func BatchesActive() string      { return prefix + "batches:active" }
func BatchLock(id string) string { return prefix + "batch-lock:" + id }

// Provider keys share the hash tag {provider:<name>}, so that one script may
// touch all of them on a Redis Cluster.

// ProviderLeases holds the in-flight calls to a provider, fleet-wide (sorted
// set of lease tokens scored by their expiry in ms).
func ProviderLeases(name string) string { return prefix + "{provider:" + name + "}:leases" }

// ProviderRequests is a provider's request-rate window: the send time of
// each call in it, sent or reserved (a sorted set).
func ProviderRequests(name string) string { return prefix + "{provider:" + name + "}:requests" }

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

// JobPrefix is what precedes a job id in the keys of its record: the jobs of
// one session share it (their bucket), so a script can name the next job's record.
func JobPrefix(id string) string { return tagged(Bucket(id)) + "job:" }

// The scheduler's keys all carry the tag {sched}: one slot, so that each
// dispatch decision is one script (store/schedule.go names them).

// SchedPrefix starts every key of the scheduler.
func SchedPrefix() string { return prefix + "{sched}:" }

// SchedJobs maps each job waiting in the scheduler to its place (a hash).
func SchedJobs() string { return SchedPrefix() + "jobs" }

// SchedNudge is the channel on which the scheduler tells the workers' dispatchers
// that work came (in the scheduler's slot, for sharded pub/sub).
func SchedNudge() string { return SchedPrefix() + "nudge" }
