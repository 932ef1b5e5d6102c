// Package config loads and validates chatfleet's settings from the environment.
//
// Parsing is strict: a malformed value is an error naming the variable, never a
// silent default. Load reports every problem at once.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/chatfleet/chatfleet/internal/redisconn"
)

// Environments.
const (
	EnvDevelopment = "development"
	EnvProduction  = "production"
)

// Config holds every setting of the api and worker processes.
type Config struct {
	Env             string
	HTTPAddr        string
	RedisURL        string
	APIKeys         map[[32]byte]string // SHA-256 of a key -> tenant
	TenantRate      int                 // requests per second per tenant; 0: unlimited
	TenantBurst     int
	TenantMaxJobs   int      // unfinished jobs per tenant; 0: unlimited
	Models          []string // allowed models; empty: any
	LLMProvider     string
	LLMBaseURL      string
	LLMAPIKey       string
	LLMModel        string
	LLMFallbacks    string         // as configured
	Fallbacks       []ProviderSpec // parsed from LLMFallbacks
	OnAllDown       string         // degrade, fail or defer
	DegradedReply   string
	LLMTimeout      time.Duration // whole call
	FirstTokenWait  time.Duration // longest wait for a provider's first token
	IdleTimeout     time.Duration // longest gap between two tokens
	JobLease        time.Duration // a running job's heartbeat lease
	LLMLimits       Limits        // the primary provider's quota
	MaxRetryDelay   time.Duration // cap of every retry delay, Retry-After included
	BreakerFailures int
	BreakerOpenFor  time.Duration

	WorkerConcurrency   int
	QueuePollInterval   time.Duration
	QueueSpread         int
	ShutdownTimeout     time.Duration
	QueueAlertThreshold int
	JobRetention        time.Duration
	MaxRetries          int
	HistoryMaxMessages  int
	HistoryTTL          time.Duration
	StreamFlushInterval time.Duration
	StreamFlushBytes    int
	SSEHeartbeat        time.Duration
	StreamMaxDuration   time.Duration
	TenantMaxStreams    int
	AdminKey            string
	LogLevel            string

	SimLatency    time.Duration
	SimTokenDelay time.Duration
	SimTokens     int
	SimFailRate   float64
}

// Var describes one environment variable: its name, default and meaning.
// The table is the single source for parsing, `config check` and .env.example.
type Var struct {
	Name    string
	Default string
	Help    string
	Secret  bool
	set     func(c *Config, v string) error
}

// Role selects role-specific defaults.
type Role string

// Process roles.
const (
	RoleAPI        Role = "api"
	RoleWorker     Role = "worker"
	RoleStandalone Role = "standalone" // api --standalone: API and worker in one process
)

// Vars lists every variable chatfleet reads, in documentation order.
func Vars(role Role) []Var {
	addr := ":8080"
	switch role {
	case RoleWorker:
		addr = ":8081"
	case RoleStandalone:
		addr = "127.0.0.1:8080" // a development mode: not reachable from other hosts unless asked
	}
	return []Var{
		{"CHATFLEET_ENV", EnvDevelopment, "development or production; production refuses embedded Redis, the simulated LLM and missing API keys", false,
			func(c *Config, v string) error {
				if v != EnvDevelopment && v != EnvProduction {
					return fmt.Errorf("must be %q or %q, got %q", EnvDevelopment, EnvProduction, v)
				}
				c.Env = v
				return nil
			}},
		{"CHATFLEET_HTTP_ADDR", addr, "listen address (api :8080, worker :8081, api --standalone 127.0.0.1:8080)", false,
			func(c *Config, v string) error { c.HTTPAddr = v; return validAddr(v) }},
		{"CHATFLEET_REDIS_URL", "", "redis://, rediss://, redis-socket://, redis-sentinel:// or redis-cluster://host:port[,host:port…] (rediss-cluster:// with TLS) URL; empty means embedded Redis (api --standalone only)", true,
			func(c *Config, v string) error { c.RedisURL = v; return validRedisURL(v) }},
		{"CHATFLEET_API_KEYS", "", "comma-separated tenant:key pairs, or tenant:sha256:<hex of the key's SHA-256> so that no key sits in plain text; empty disables auth outside production", true,
			func(c *Config, v string) (err error) { c.APIKeys, err = parseAPIKeys(v); return err }},
		{"CHATFLEET_TENANT_RATE", "0", "API requests per second per tenant, shared by all API processes (0: unlimited; e.g. 50 in a multi-tenant production)", false,
			intVar(func(c *Config) *int { return &c.TenantRate }, 0)},
		{"CHATFLEET_TENANT_BURST", "100", "requests a tenant may send at once above its rate", false,
			intVar(func(c *Config) *int { return &c.TenantBurst }, 1)},
		{"CHATFLEET_TENANT_MAX_JOBS", "0", "unfinished (queued or running) jobs per tenant; beyond it submits get 429 (0: unlimited; e.g. 1000 in a multi-tenant production)", false,
			intVar(func(c *Config) *int { return &c.TenantMaxJobs }, 0)},
		{"CHATFLEET_MODELS", "", "comma-separated models a job may ask for; empty allows any", false,
			func(c *Config, v string) error {
				c.Models = nil
				for _, m := range strings.Split(v, ",") {
					if m = strings.TrimSpace(m); m != "" {
						c.Models = append(c.Models, m)
					}
				}
				return nil
			}},
		{"CHATFLEET_LLM_PROVIDER", "sim", "openai (any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, LiteLLM, OpenRouter), anthropic, or sim (simulated, deterministic)", false,
			func(c *Config, v string) error {
				if !validKind(v) {
					return fmt.Errorf("must be openai, anthropic or sim, got %q", v)
				}
				c.LLMProvider = v
				return nil
			}},
		{"CHATFLEET_LLM_BASE_URL", "", "provider endpoint", false,
			func(c *Config, v string) error { c.LLMBaseURL = v; return validOptionalURL(v) }},
		{"CHATFLEET_LLM_API_KEY", "", "provider API key", true,
			func(c *Config, v string) error { c.LLMAPIKey = v; return nil }},
		{"CHATFLEET_LLM_MODEL", "", "default model name", false,
			func(c *Config, v string) error { c.LLMModel = v; return nil }},
		{"CHATFLEET_LLM_FALLBACKS", "", "ordered fallback providers, comma-separated, each kind[:model][@base_url][#KEY_VARIABLE][;rpm=N][;tpm=N][;concurrency=N], e.g. anthropic:claude-haiku-4-5#ANTHROPIC_API_KEY;rpm=50,openai:llama3@http://ollama:11434/v1;concurrency=4", false,
			func(c *Config, v string) error { c.LLMFallbacks = v; return nil }},
		{"CHATFLEET_ON_ALL_PROVIDERS_DOWN", "degrade", "when every provider is open or failing: degrade (the job succeeds with CHATFLEET_DEGRADED_REPLY, degraded: true), fail, or defer (park the job until a breaker half-opens)", false,
			func(c *Config, v string) error {
				if v != "degrade" && v != "fail" && v != "defer" {
					return fmt.Errorf("must be degrade, fail or defer, got %q", v)
				}
				c.OnAllDown = v
				return nil
			}},
		{"CHATFLEET_DEGRADED_REPLY", "The assistant is temporarily unavailable. Please try again in a few minutes.", "the reply of a degraded job", false,
			func(c *Config, v string) error { c.DegradedReply = v; return nil }},
		{"CHATFLEET_LLM_FIRST_TOKEN_TIMEOUT", "60s", "longest wait for a provider's first token; then the call counts as failed (for the breaker too) and the next provider is tried", false,
			durationVar(func(c *Config) *time.Duration { return &c.FirstTokenWait }, time.Millisecond)},
		{"CHATFLEET_LLM_IDLE_TIMEOUT", "30s", "longest gap between two tokens; a stall after output has begun is retried but is not a breaker failure", false,
			durationVar(func(c *Config) *time.Duration { return &c.IdleTimeout }, time.Millisecond)},
		{"CHATFLEET_LLM_TIMEOUT", "10m", "whole-call cap of one provider call (long generations are normal)", false,
			durationVar(func(c *Config) *time.Duration { return &c.LLMTimeout }, time.Millisecond)},
		{"CHATFLEET_JOB_LEASE", "5s", "a running job's heartbeat lease, renewed every third of it; a job whose worker died is taken over by another after it (plus about a second)", false,
			durationVar(func(c *Config) *time.Duration { return &c.JobLease }, 300*time.Millisecond)},
		{"CHATFLEET_LLM_RPM", "0", "the primary provider's requests per minute, enforced for the whole fleet (0: no limit)", false,
			intVar(func(c *Config) *int { return &c.LLMLimits.RPM }, 0)},
		{"CHATFLEET_LLM_TPM", "0", "the primary provider's tokens per minute, fleet-wide: the prompt and output cap are counted before a call, the reported usage after it (0: no limit)", false,
			intVar(func(c *Config) *int { return &c.LLMLimits.TPM }, 0)},
		{"CHATFLEET_LLM_MAX_CONCURRENCY", "0", "the primary provider's calls in flight, fleet-wide (0: learned from its 429s)", false,
			intVar(func(c *Config) *int { return &c.LLMLimits.Concurrency }, 0)},
		{"CHATFLEET_MAX_RETRY_DELAY", "5m", "cap on any retry delay, a provider's Retry-After included", false,
			durationVar(func(c *Config) *time.Duration { return &c.MaxRetryDelay }, time.Second)},
		{"CHATFLEET_BREAKER_FAILURES", "5", "consecutive failures that open a provider's breaker", false,
			intVar(func(c *Config) *int { return &c.BreakerFailures }, 1)},
		{"CHATFLEET_BREAKER_OPEN_FOR", "60s", "how long an open breaker stays open before half-open", false,
			durationVar(func(c *Config) *time.Duration { return &c.BreakerOpenFor }, time.Millisecond)},
		{"CHATFLEET_WORKER_CONCURRENCY", "100", "concurrent jobs per worker process", false,
			intVar(func(c *Config) *int { return &c.WorkerConcurrency }, 1)},
		{"CHATFLEET_QUEUE_POLL_INTERVAL", "20ms", "how often an idle worker polls the empty queues; the floor of time-to-first-token on an idle fleet", false,
			durationVar(func(c *Config) *time.Duration { return &c.QueuePollInterval }, time.Millisecond)},
		{"CHATFLEET_QUEUE_SPREAD", "1", "queues per priority, for Redis Cluster: asynq keeps a queue on one slot, so one master does asynq's work for all jobs of a queue; set the number of masters, the same on every api and worker (each idle poll asks every queue)", false,
			func(c *Config, v string) error {
				if err := intVar(func(c *Config) *int { return &c.QueueSpread }, 1)(c, v); err != nil {
					return err
				}
				if c.QueueSpread > 16 {
					return fmt.Errorf("must be at most 16, got %d", c.QueueSpread)
				}
				return nil
			}},
		{"CHATFLEET_SHUTDOWN_TIMEOUT", "25s", "how long SIGTERM waits for in-flight jobs before handing them back to the queue; keep below the orchestrator's grace period", false,
			durationVar(func(c *Config) *time.Duration { return &c.ShutdownTimeout }, time.Second)},
		{"CHATFLEET_QUEUE_ALERT_THRESHOLD", "500", "backlog above which queue status is warning", false,
			intVar(func(c *Config) *int { return &c.QueueAlertThreshold }, 1)},
		{"CHATFLEET_JOB_RETENTION", "24h", "how long results, event logs and idempotency keys are kept", false,
			durationVar(func(c *Config) *time.Duration { return &c.JobRetention }, time.Second)},
		{"CHATFLEET_MAX_RETRIES", "3", "attempts after the first for retryable failures", false,
			intVar(func(c *Config) *int { return &c.MaxRetries }, 0)},
		{"CHATFLEET_HISTORY_MAX_MESSAGES", "50", "messages kept per session history (oldest dropped first)", false,
			intVar(func(c *Config) *int { return &c.HistoryMaxMessages }, 2)},
		{"CHATFLEET_HISTORY_TTL", "168h", "how long an idle session's history is kept", false,
			durationVar(func(c *Config) *time.Duration { return &c.HistoryTTL }, time.Second)},
		{"CHATFLEET_STREAM_FLUSH_INTERVAL", "20ms", "token deltas after the first are batched for this long before they go out (0s sends each at once)", false,
			durationVar(func(c *Config) *time.Duration { return &c.StreamFlushInterval }, 0)},
		{"CHATFLEET_STREAM_FLUSH_BYTES", "256", "a batch of token deltas goes out early once it holds this many bytes", false,
			intVar(func(c *Config) *int { return &c.StreamFlushBytes }, 1)},
		{"CHATFLEET_STREAM_MAX_DURATION", "1h", "a stream ends cleanly after this long; the client resumes with Last-Event-ID", false,
			durationVar(func(c *Config) *time.Duration { return &c.StreamMaxDuration }, time.Second)},
		{"CHATFLEET_TENANT_MAX_STREAMS", "0", "concurrent streams of one tenant across all API processes, streamed /v1 requests included; beyond it 429 (0: unlimited; e.g. 200 in a multi-tenant production)", false,
			intVar(func(c *Config) *int { return &c.TenantMaxStreams }, 0)},
		{"CHATFLEET_ADMIN_KEY", "", "password of the operators' queue UI at /admin/queues (HTTP basic auth, any user name); empty disables the UI", true,
			func(c *Config, v string) error {
				if v != "" && len(v) < 16 {
					return errors.New("must be at least 16 characters")
				}
				c.AdminKey = v
				return nil
			}},
		{"CHATFLEET_SSE_HEARTBEAT", "15s", "comment heartbeat interval on idle SSE streams", false,
			durationVar(func(c *Config) *time.Duration { return &c.SSEHeartbeat }, 100*time.Millisecond)},
		{"CHATFLEET_LOG_LEVEL", "info", "trace, debug, info, warn or error", false,
			func(c *Config, v string) error {
				switch v {
				case "trace", "debug", "info", "warn", "error":
					c.LogLevel = v
					return nil
				}
				return fmt.Errorf("must be trace, debug, info, warn or error, got %q", v)
			}},
		{"CHATFLEET_SIM_LATENCY", "0s", "simulated time to first token", false,
			durationVar(func(c *Config) *time.Duration { return &c.SimLatency }, 0)},
		{"CHATFLEET_SIM_TOKEN_DELAY", "0s", "simulated delay between tokens", false,
			durationVar(func(c *Config) *time.Duration { return &c.SimTokenDelay }, 0)},
		{"CHATFLEET_SIM_TOKENS", "0", "filler words appended to the simulated reply", false,
			intVar(func(c *Config) *int { return &c.SimTokens }, 0)},
		{"CHATFLEET_SIM_FAIL_RATE", "0", "fraction (0..1) of simulated calls that fail before any token", false,
			func(c *Config, v string) error {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil || f < 0 || f > 1 {
					return fmt.Errorf("must be a number from 0 to 1, got %q", v)
				}
				c.SimFailRate = f
				return nil
			}},
	}
}

// Load reads every variable through getenv, applies defaults and validates.
// The returned error lists every problem, one per line, each naming its variable.
func Load(role Role, getenv func(string) string) (Config, error) {
	var c Config
	var errs []error
	for _, v := range Vars(role) {
		raw := strings.TrimSpace(getenv(v.Name))
		if raw == "" {
			raw = v.Default
		}
		if err := v.set(&c, raw); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", v.Name, err))
		}
	}
	if fb, err := parseFallbacks(c.LLMFallbacks, getenv); err != nil {
		errs = append(errs, fmt.Errorf("CHATFLEET_LLM_FALLBACKS: %w", err))
	} else {
		c.Fallbacks = fb
	}
	if c.LLMProvider != "sim" && c.LLMModel == "" {
		errs = append(errs, fmt.Errorf("CHATFLEET_LLM_MODEL: required for the %s provider", c.LLMProvider))
	}
	if c.RedisURL == "" && role != RoleStandalone {
		errs = append(errs, fmt.Errorf("CHATFLEET_REDIS_URL: required for %s (only api --standalone embeds Redis)", role))
	}
	errs = append(errs, c.crossChecks()...)
	return c, errors.Join(errs...)
}

func (c Config) crossChecks() []error {
	var errs []error
	if c.Env != EnvProduction {
		return nil
	}
	if c.RedisURL == "" {
		errs = append(errs, errors.New("CHATFLEET_REDIS_URL: production needs a real Redis; embedded Redis is for development only"))
	}
	if c.LLMProvider == "sim" {
		errs = append(errs, errors.New("CHATFLEET_LLM_PROVIDER: production refuses the simulated LLM"))
	}
	for _, f := range c.Fallbacks {
		if f.Kind == "sim" {
			errs = append(errs, errors.New("CHATFLEET_LLM_FALLBACKS: production refuses the simulated LLM"))
			break
		}
	}
	if len(c.APIKeys) == 0 {
		errs = append(errs, errors.New("CHATFLEET_API_KEYS: production needs at least one tenant:key pair"))
	}
	if len(c.Models) == 0 {
		errs = append(errs, errors.New("CHATFLEET_MODELS: production needs the list of models tenants may ask for (any other string would reach the provider)"))
	}
	return errs
}

// ProviderSpec is one LLM provider of the chain.
type ProviderSpec struct {
	Kind    string // openai, anthropic or sim
	Model   string
	BaseURL string
	APIKey  string
	Limits  Limits
}

// Limits are a provider's quota, enforced for the whole fleet (0: none).
type Limits struct {
	RPM, TPM, Concurrency int
}

// Primary is the provider named by CHATFLEET_LLM_PROVIDER and its variables.
func (c Config) Primary() ProviderSpec {
	return ProviderSpec{Kind: c.LLMProvider, Model: c.LLMModel, BaseURL: c.LLMBaseURL, APIKey: c.LLMAPIKey, Limits: c.LLMLimits}
}

func validKind(k string) bool { return k == "openai" || k == "anthropic" || k == "sim" }

// parseFallbacks reads kind[:model][@base_url][#KEY_VARIABLE][;rpm=N][;tpm=N][;concurrency=N],
// comma-separated. Keys come from the named variables, so that no secret sits
// in the list.
func parseFallbacks(v string, getenv func(string) string) ([]ProviderSpec, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var out []ProviderSpec
	for i, entry := range strings.Split(v, ",") {
		entry = strings.TrimSpace(entry)
		var spec ProviderSpec
		entry, opts, _ := strings.Cut(entry, ";")
		if opts != "" {
			if err := parseLimits(opts, &spec.Limits); err != nil {
				return nil, fmt.Errorf("entry %d: %w", i+1, err)
			}
		}
		entry, keyVar, hasKey := strings.Cut(entry, "#")
		entry, spec.BaseURL, _ = strings.Cut(entry, "@")
		spec.Kind, spec.Model, _ = strings.Cut(entry, ":")
		if !validKind(spec.Kind) {
			return nil, fmt.Errorf("entry %d: kind must be openai, anthropic or sim, got %q", i+1, spec.Kind)
		}
		if spec.Kind != "sim" && spec.Model == "" {
			return nil, fmt.Errorf("entry %d: %s needs a model (%s:MODEL)", i+1, spec.Kind, spec.Kind)
		}
		if err := validOptionalURL(spec.BaseURL); err != nil {
			return nil, fmt.Errorf("entry %d: base URL %w", i+1, err)
		}
		if hasKey {
			if spec.APIKey = getenv(keyVar); spec.APIKey == "" {
				return nil, fmt.Errorf("entry %d: key variable %s is not set", i+1, keyVar)
			}
		}
		out = append(out, spec)
	}
	return out, nil
}

// parseLimits reads rpm=N;tpm=N;concurrency=N (any of them, any order).
func parseLimits(opts string, l *Limits) error {
	for _, kv := range strings.Split(opts, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 0 {
			return fmt.Errorf("limit %q must be name=N with N a whole number of 0 or more", kv)
		}
		switch k {
		case "rpm":
			l.RPM = n
		case "tpm":
			l.TPM = n
		case "concurrency":
			l.Concurrency = n
		default:
			return fmt.Errorf("unknown limit %q (rpm, tpm, concurrency)", k)
		}
	}
	return nil
}

// Summary renders the effective settings with secrets redacted, for `config check`.
func (c Config) Summary(role Role, getenv func(string) string) string {
	var b strings.Builder
	for _, v := range Vars(role) {
		raw := strings.TrimSpace(getenv(v.Name))
		src := "env"
		if raw == "" {
			raw, src = v.Default, "default"
		}
		if v.Secret && raw != "" {
			raw = "(set, redacted)"
		}
		fmt.Fprintf(&b, "%s=%s (%s)\n", v.Name, raw, src)
	}
	return b.String()
}

func intVar(field func(*Config) *int, min int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("must be a whole number, got %q", v)
		}
		if n < min {
			return fmt.Errorf("must be at least %d, got %d", min, n)
		}
		*field(c) = n
		return nil
	}
}

func durationVar(field func(*Config) *time.Duration, min time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("must be a duration such as 500ms, 30s or 2h, got %q", v)
		}
		if d < min {
			return fmt.Errorf("must be at least %s, got %s", min, d)
		}
		*field(c) = d
		return nil
	}
}

func validAddr(v string) error {
	i := strings.LastIndex(v, ":")
	if i < 0 {
		return fmt.Errorf("must be host:port or :port, got %q", v)
	}
	p, err := strconv.Atoi(v[i+1:])
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port must be 0..65535, got %q", v)
	}
	return nil
}

func validRedisURL(v string) error {
	if v == "" {
		return nil
	}
	if strings.HasPrefix(v, "redis-cluster://") || strings.HasPrefix(v, "rediss-cluster://") {
		// host:port[,host:port…] is not a URL host: the one parser reads it.
		_, err := redisconn.ConnOpt(v)
		return err
	}
	u, err := url.Parse(v)
	if err != nil {
		return errors.New("is not a valid URL")
	}
	switch u.Scheme {
	case "redis", "rediss", "redis-sentinel":
		if u.Host == "" {
			return errors.New("has no host")
		}
	case "redis-socket":
		if u.Path == "" {
			return errors.New("has no socket path")
		}
	default:
		return fmt.Errorf("scheme must be redis, rediss, redis-socket, redis-sentinel, redis-cluster or rediss-cluster, got %q", u.Scheme)
	}
	return nil
}

func validOptionalURL(v string) error {
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("must be an http:// or https:// URL")
	}
	return nil
}

// parseAPIKeys reads tenant:key and tenant:sha256:<hex> entries into key
// digests. Errors never quote an entry: it holds a secret.
func parseAPIKeys(v string) (map[[32]byte]string, error) {
	keys := map[[32]byte]string{}
	if v == "" {
		return keys, nil
	}
	for i, pair := range strings.Split(v, ",") {
		tenant, key, ok := strings.Cut(strings.TrimSpace(pair), ":")
		if !ok || tenant == "" || key == "" {
			return nil, fmt.Errorf("entry %d is not tenant:key", i+1)
		}
		if !validTenant(tenant) {
			return nil, fmt.Errorf("entry %d: tenant must be 1-64 of a-z, 0-9, _ and -", i+1)
		}
		var digest [32]byte
		if h, hashed := strings.CutPrefix(key, "sha256:"); hashed {
			b, err := hex.DecodeString(h)
			if err != nil || len(b) != 32 {
				return nil, fmt.Errorf("entry %d: sha256: must be followed by 64 hex digits", i+1)
			}
			copy(digest[:], b)
		} else {
			if len(key) < 16 {
				return nil, fmt.Errorf("entry %d: key must be at least 16 characters", i+1)
			}
			digest = sha256.Sum256([]byte(key))
		}
		if _, dup := keys[digest]; dup {
			return nil, fmt.Errorf("entry %d: key is used twice", i+1)
		}
		keys[digest] = tenant
	}
	return keys, nil
}

func validTenant(t string) bool {
	if len(t) == 0 || len(t) > 64 {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Getenv looks variables up in environ ("NAME=value" entries, as os.Environ).
func Getenv(environ []string) func(string) string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(k string) string { return m[k] }
}

// Unknown returns a warning for every CHATFLEET_ variable in environ that
// chatfleet does not read (a misspelling is otherwise silently ignored), with
// the nearest known name when one is close.
func Unknown(environ []string) []string {
	known := map[string]bool{}
	var names []string
	for _, v := range Vars(RoleAPI) {
		known[v.Name] = true
		names = append(names, v.Name)
	}
	getenv := Getenv(environ)
	// Key variables named by the fallback list are read too.
	for _, entry := range strings.Split(getenv("CHATFLEET_LLM_FALLBACKS"), ",") {
		entry, _, _ = strings.Cut(entry, ";")
		if _, keyVar, ok := strings.Cut(entry, "#"); ok {
			known[strings.TrimSpace(keyVar)] = true
		}
	}
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "CHATFLEET_") || known[k] {
			continue
		}
		w := k + ": unknown variable, ignored"
		if near := nearest(k, names); near != "" {
			w += "; did you mean " + near + "?"
		}
		out = append(out, w)
	}
	sort.Strings(out)
	return out
}

// nearest returns the name within a small edit distance of k, if any.
func nearest(k string, names []string) string {
	best, bestD := "", 4
	for _, n := range names {
		if d := editDistance(k, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Check is the `config check` command: it validates without starting, prints
// the effective settings (secrets redacted) or every problem, names unknown
// CHATFLEET_ variables, and returns the process exit code.
func Check(role Role, environ []string, stdout, stderr io.Writer) int {
	getenv := Getenv(environ)
	for _, w := range Unknown(environ) {
		fmt.Fprintln(stderr, "warning: "+w)
	}
	c, err := Load(role, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "config check failed:\n%s\n", err)
		return 1
	}
	fmt.Fprint(stdout, c.Summary(role, getenv))
	fmt.Fprintln(stdout, "config ok")
	return 0
}
