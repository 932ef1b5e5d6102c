// Package webhooks calls a job's submitter back when the job ends: OpenAI's
// response.* events for background responses, job.* events for the jobs API,
// in OpenAI's envelope and signed per Standard Webhooks, so that the OpenAI
// SDKs verify them unchanged.
//
// The path of one event: the script that ends a job puts it in its bucket's
// outbox (store/finish.go), atomically with the final state; the process that
// ended it builds the event, enqueues one asynq task per endpoint on the
// deliveries' own queue and takes the job out of the outbox (Outbox.Flush);
// a sweep does the same for jobs whose process died first. Each task is
// delivered at least once under one webhook-id, retried with backoff for a
// day, then archived for operators to re-deliver (Deliverer, Admin).
package webhooks

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/chatfleet/chatfleet/store"
	"github.com/chatfleet/chatfleet/tasks"
)

// Spec is what a job calls back, kept on its record (store.NewJob.Webhook).
type Spec struct {
	Kind     string `json:"kind"`                // "job" (jobs API) or "response" (background responses)
	ObjectID string `json:"object_id,omitempty"` // the response's id (resp_…)
	URL      string `json:"url,omitempty"`       // the job's own webhook_url
}

// Spec kinds.
const (
	KindJob      = "job"
	KindResponse = "response"
)

// Encode returns the spec as the record keeps it.
func (s Spec) Encode() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Endpoint is one configured receiver of a tenant's events.
type Endpoint struct {
	Tenant        string
	URL           string // empty: the entry only gives the tenant's secret
	Secret        string // whsec_…
	Events        []string
	IncludeResult bool
}

func (e Endpoint) wants(event string) bool {
	return e.URL != "" && (len(e.Events) == 0 || slices.Contains(e.Events, event))
}

// Registry holds the configured endpoints by tenant.
type Registry struct {
	byTenant map[string][]Endpoint
}

// NewRegistry indexes endpoints by tenant, in the file's order.
func NewRegistry(eps []Endpoint) *Registry {
	r := &Registry{byTenant: map[string][]Endpoint{}}
	for _, e := range eps {
		r.byTenant[e.Tenant] = append(r.byTenant[e.Tenant], e)
	}
	return r
}

// HasSecret reports whether a tenant can sign a per-job webhook_url.
func (r *Registry) HasSecret(tenant string) bool { return r != nil && len(r.byTenant[tenant]) > 0 }

// Wants reports whether any endpoint of the tenant takes an event of kind
// (so that its jobs of that kind must call back).
func (r *Registry) Wants(tenant, kind string) bool {
	if r == nil {
		return false
	}
	for _, e := range r.byTenant[tenant] {
		for _, ev := range eventsOf(kind) {
			if e.wants(ev) {
				return true
			}
		}
	}
	return false
}

// secret is the secret that signs deliveries of a tenant to url: the entry's
// with that URL, else the tenant's first (a per-job webhook_url).
func (r *Registry) secret(tenant, url string) (string, bool) {
	eps := r.byTenant[tenant]
	for _, e := range eps {
		if e.URL == url {
			return e.Secret, true
		}
	}
	if len(eps) == 0 {
		return "", false
	}
	return eps[0].Secret, true
}

func eventsOf(kind string) []string {
	if kind == KindResponse {
		return []string{tasks.EventResponseCompleted, tasks.EventResponseFailed, tasks.EventResponseCancelled}
	}
	return []string{tasks.EventJobSucceeded, tasks.EventJobFailed, tasks.EventJobCanceled}
}

// Deliveries are a job's deliveries as its record keeps them, by URL.
func Deliveries(j store.Job) []Delivery {
	if j.Deliveries == "" {
		return nil
	}
	var m map[string]Delivery
	if json.Unmarshal([]byte(j.Deliveries), &m) != nil {
		return nil
	}
	out := make([]Delivery, 0, len(m))
	for _, d := range m {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Delivery) int { return strings.Compare(a.URL, b.URL) })
	return out
}
