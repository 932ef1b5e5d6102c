package llm

import (
	"cmp"
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// DeploymentState is what the fleet's shared state in Redis tells of one
// deployment now, for /health/detailed and the console: its breaker and how
// much of its quota is in use. Every figure is fleet-wide.
type DeploymentState struct {
	ID       string `json:"id"`
	Model    string `json:"model"`    // the public model; the configured model for the variables' chain
	Provider string `json:"provider"` // openai, anthropic or sim
	Breaker  string `json:"breaker"`  // closed, open or half-open
	// Limits are the configured quota (0: none of that kind).
	Limits StateLimits `json:"limits"`
	// Limited is false for a deployment no limiter guards (a sim one with
	// no limits): its usage is not counted, so the figures below stay 0.
	Limited bool `json:"limited"`
	// InFlight counts the calls holding a slot now (leases not expired).
	InFlight int `json:"in_flight"`
	// ConcurrencyLimit is the configured concurrency, else the one learned
	// from its 429s (0: none yet).
	ConcurrencyLimit int `json:"concurrency_limit"`
	// Window is the request-rate window as the next call would see it
	// (with an rpm only).
	Window *RequestWindow `json:"window,omitempty"`
	// TokensAhead are the tokens sent that the tpm rate has not yet paid
	// back; a call waits when it would take them past half a second's quota
	// (with a tpm only).
	TokensAhead int `json:"tokens_ahead"`
	// PausedMS is how long the fleet still waits on a Retry-After.
	PausedMS int64 `json:"paused_ms"`
	// AtLimit is why a call last had to wait for it, within the last 10 s
	// (rpm, tpm, rate, concurrency, paused, priority; "" none).
	AtLimit string `json:"at_limit"`
	// RPMEffective is the request rate kept to now: the configured one
	// less the margin, lowered by 429s while it recovers (0: no rpm). It is
	// what chatfleet_llm_limit{kind="rpm_effective"} shows.
	RPMEffective int `json:"rpm_effective"`
}

// StateLimits are a deployment's configured quota.
type StateLimits struct {
	RPM         int `json:"rpm"`
	TPM         int `json:"tpm"`
	Concurrency int `json:"concurrency"`
}

// RequestWindow is the request-rate window: at most Allowed calls (sent or
// reserved) in any span of Millis; Requests are in the current one.
type RequestWindow struct {
	Requests int `json:"requests"`
	Allowed  int `json:"allowed"`
	Millis   int `json:"ms"`
}

// stateScript reads one deployment's limiter state as acquireScript sees it,
// on Redis's clock and without changing anything.
// KEYS: leases, requests, tpm, pause, adaptive, saturated.
// ARGV: configured rpm, the rpm ceiling (less the margin).
// Returns {in flight, window requests, window allowed, window ms, tpm ms
// ahead, pause ms, learned concurrency, effective rpm, saturated reason}.
var stateScript = redis.NewScript(redisNowLua + `
local now = redis_now()
local inflight = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local configured, rpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local n, allowed, w = 0, 0, 0
if rpm > 0 then
  rpm = math.min(rpm, tonumber(redis.call('HGET', KEYS[5], 'rpm') or rpm))
  allowed = math.max(1, math.floor(configured / 60))
  w = allowed * 60000 / rpm
  -- reserved calls are scored in the future: they count, as acquire counts them
  n = redis.call('ZCOUNT', KEYS[2], '(' .. (now - w), '+inf')
end
local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
local pause = math.max(0, redis.call('PTTL', KEYS[4]))
local learned = tonumber(redis.call('HGET', KEYS[5], 'limit') or '0')
local why = redis.call('GET', KEYS[6]) or ''
return {inflight, n, allowed, math.floor(w), math.floor(math.max(0, tat - now)), pause, math.floor(learned), math.floor(rpm), why}
`)

// DeploymentStates reads each deployment's breaker and limiter state from
// Redis, in the order of specs. margin is CHATFLEET_LLM_RATE_MARGIN, which
// the effective rate starts under.
func DeploymentStates(ctx context.Context, rdb redis.UniversalClient, specs []Spec, margin float64) ([]DeploymentState, error) {
	names := ProviderNames(specs)
	breakers, err := BreakerStates(ctx, rdb, names)
	if err != nil {
		return nil, err
	}
	set := CapacitySettings{Margin: margin}
	set.defaults()
	out := make([]DeploymentState, len(specs))
	// One pipeline: each script touches one deployment's keys (one hash
	// slot on a cluster), and the client splits the pipeline by slot. EVAL,
	// not EVALSHA: a pipeline cannot load a missing script, and a health
	// read is rare enough to send the script's text.
	cmds := make([]*redis.Cmd, len(specs))
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range specs {
			n := names[i]
			keys := []string{rkeys.ProviderLeases(n), rkeys.ProviderRequests(n), rkeys.ProviderTPM(n), rkeys.ProviderPause(n),
				rkeys.ProviderAdaptive(n), rkeys.ProviderSaturated(n)}
			cmds[i] = stateScript.Eval(ctx, p, keys, s.Limits.RPM, set.under(s.Limits.RPM))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("deployment state: %w", err)
	}
	for i, s := range specs {
		v, err := cmds[i].Slice()
		if err != nil || len(v) != 9 {
			return nil, fmt.Errorf("deployment %s state: %v", names[i], err)
		}
		num := func(j int) int64 { x, _ := v[j].(int64); return x }
		why, _ := v[8].(string)
		st := DeploymentState{ID: names[i], Model: cmp.Or(s.Public, s.Model, s.Kind), Provider: s.Kind, Breaker: breakers[names[i]],
			Limits:  StateLimits{RPM: s.Limits.RPM, TPM: s.Limits.TPM, Concurrency: s.Limits.Concurrency},
			Limited: s.Kind != "sim" || s.Limits != (Limits{}), InFlight: int(num(0)), ConcurrencyLimit: s.Limits.Concurrency,
			PausedMS: num(5), AtLimit: why, RPMEffective: int(num(7))}
		if s.Limits == (Limits{}) && st.Limited {
			st.ConcurrencyLimit = int(num(6)) // learned: adaptive only without limits
		}
		if s.Limits.RPM > 0 {
			st.Window = &RequestWindow{Requests: int(num(1)), Allowed: int(num(2)), Millis: int(num(3))}
		}
		if tpm := set.under(s.Limits.TPM); tpm > 0 {
			st.TokensAhead = int(num(4) * int64(tpm) / 60000)
		}
		out[i] = st
	}
	return out, nil
}
