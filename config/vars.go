package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

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
		{"CHATFLEET_TENANT_WEIGHTS", "", "tenant:weight,… shares of the fleet while several tenants have queued jobs (a tenant not listed: 1)", false,
			func(c *Config, v string) error {
				w, err := parseTenantWeights(v)
				c.TenantWeights = w
				return err
			}},
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
		{"CHATFLEET_MODELS_FILE", "", "YAML (or JSON) file listing the public models and their deployments (docs/providers.md); when set, CHATFLEET_LLM_PROVIDER, _MODEL, _BASE_URL, _API_KEY, _FALLBACKS and the quota variables are not used", false,
			func(c *Config, v string) error { c.ModelsFile = v; return nil }},
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
		{"CHATFLEET_LLM_RATE_MARGIN", "0.05", "fraction under a configured RPM and TPM the fleet sends at (providers count at the edge of windows shorter than a minute); 0 sends at exactly the limit", false,
			func(c *Config, v string) error {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil || f < 0 || f > 0.5 {
					return fmt.Errorf("must be a fraction from 0 to 0.5, got %q", v)
				}
				c.RateMargin = f
				return nil
			}},
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
		{"CHATFLEET_QUEUE_POLL_INTERVAL", "20ms", "how often an idle worker polls the empty queues: how soon asynq's own tasks (retries, takeovers) start; the jobs a worker is handed start at once", false,
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
		{"CHATFLEET_STREAM_FLUSH_INTERVAL", "25ms", "token deltas after the first are batched for this long before they go out to a job followed live: the time between visible updates, against Redis work (each batch is one publish, pipelined with the worker's other jobs'; the event log is written at CHATFLEET_STREAM_UNFOLLOWED_FLUSH_INTERVAL meanwhile; 0s sends each at once)", false,
			durationVar(func(c *Config) *time.Duration { return &c.StreamFlushInterval }, 0)},
		{"CHATFLEET_STREAM_UNFOLLOWED_FLUSH_INTERVAL", "2s", "while nobody follows a job live (its caller polls, waits for a webhook or has not connected yet), token deltas are batched this long (up to 16 KiB) instead: the event log stays exact, Redis is written less often; a follower that connects gets what waits at once. While somebody follows, the event log is written this often (one fenced script for what went out live meanwhile). 0s, or at most CHATFLEET_STREAM_FLUSH_INTERVAL: no difference, and followed batches go to the log one by one", false,
			durationVar(func(c *Config) *time.Duration { return &c.StreamUnfollowedFlushInterval }, 0)},
		{"CHATFLEET_STREAM_FLUSH_BYTES", "256", "a batch of token deltas goes out early once it holds this many bytes", false,
			intVar(func(c *Config) *int { return &c.StreamFlushBytes }, 1)},
		{"CHATFLEET_STREAM_MAX_DURATION", "1h", "a stream ends cleanly after this long; the client resumes with Last-Event-ID", false,
			durationVar(func(c *Config) *time.Duration { return &c.StreamMaxDuration }, time.Second)},
		{"CHATFLEET_TENANT_MAX_STREAMS", "0", "held connections of one tenant across all API processes (SSE streams, ?wait= long polls, /v1 requests waiting for their answer); beyond it 429 (0: unlimited; e.g. 200 in a multi-tenant production)", false,
			intVar(func(c *Config) *int { return &c.TenantMaxStreams }, 0)},
		{"CHATFLEET_MAX_INFLIGHT_BYTES", "268435456", "request body bytes one API process reads and holds until their jobs are submitted (256 MiB); beyond it a submit gets 429 too_many_bytes_in_flight before its body is read (0: no limit)", false,
			int64Var(func(c *Config) *int64 { return &c.MaxInflightBytes })},
		{"CHATFLEET_FILES_MAX_BYTES", "104857600", "largest file /v1/files accepts (100 MiB); a larger upload gets 413 and nothing is written", false,
			int64Var(func(c *Config) *int64 { return &c.FilesMaxBytes })},
		{"CHATFLEET_BATCH_MAX_REQUESTS", "50000", "most request lines a batch input file may hold; more get 400 and nothing is written", false,
			intVar(func(c *Config) *int { return &c.BatchMaxRequests }, 1)},
		{"CHATFLEET_FILES_RETENTION", "168h", "how long files (batch input, output and error files) and batches are kept", false,
			durationVar(func(c *Config) *time.Duration { return &c.FilesRetention }, time.Minute)},
		{"CHATFLEET_TENANT_MAX_INFLIGHT_BYTES", "", "the same per tenant and API process (default: a quarter of CHATFLEET_MAX_INFLIGHT_BYTES; 0: no limit): one tenant's large requests leave the rest to the others", false,
			func(c *Config, v string) error {
				if v == "" {
					c.TenantMaxInflightBytes = -1 // a quarter of the process's limit, set once it is read
					return nil
				}
				return int64Var(func(c *Config) *int64 { return &c.TenantMaxInflightBytes })(c, v)
			}},
		{"CHATFLEET_RESPONSES_MAX_CONVERSATION_BYTES", "4194304", "largest /v1/responses conversation (text, tool calls, images) a previous_response_id may continue; beyond it 400 naming previous_response_id (0: no cap)", false,
			intVar(func(c *Config) *int { return &c.ResponsesMaxConversationBytes }, 0)},
		{"CHATFLEET_ADMIN_KEY", "", "password of the operators' queue UI at /admin/queues (HTTP basic auth, any user name); empty disables the UI", true,
			func(c *Config, v string) error {
				if v != "" && len(v) < 16 {
					return errors.New("must be at least 16 characters")
				}
				c.AdminKey = v
				return nil
			}},
		{"CHATFLEET_USAGE_RETENTION", "2160h", "how long the usage ledger keeps each tenant's tokens per day and model (90 days), counted from the end of each month", false,
			durationVar(func(c *Config) *time.Duration { return &c.UsageRetention }, 24*time.Hour)},
		{"CHATFLEET_MODEL_PRICES", "", "prices per model in US dollars per million tokens, model:input=X,output=Y;… (usage of a model without a price shows tokens only)", false,
			func(c *Config, v string) (err error) { c.ModelPrices, err = parsePrices(v); return err }},
		{"CHATFLEET_TENANT_BUDGETS", "", "spending limits, tenant:tokens=N/day or tenant:usd=N/month (usd needs CHATFLEET_MODEL_PRICES), each with an optional ,soft=P% past which the tenant is reported (chatfleet_tenants_over_soft_limit, a warning log), ;-separated: a submit once the budget is spent gets 429 insufficient_quota until the period resets (UTC)", false,
			func(c *Config, v string) (err error) { c.TenantBudgets, err = parseBudgets(v); return err }},
		{"CHATFLEET_WEBHOOKS_FILE", "", "JSON file of webhook endpoints, an array of {\"tenant\",\"url\",\"secret\":\"whsec_…\",\"events\":[…],\"include_result\":false}; an entry without url only gives the tenant's secret for per-job webhook_url (docs/webhooks.md)", false,
			func(c *Config, v string) error { c.WebhooksFile = v; return nil }},
		{"CHATFLEET_WEBHOOK_ALLOW_PRIVATE", "false", "allow webhooks to loopback, private, link-local and metadata addresses (tests, private networks); refused otherwise, checked on the address connected to", false,
			boolVar(func(c *Config) *bool { return &c.WebhookAllowPrivate })},
		{"CHATFLEET_WEBHOOK_ALLOW_HTTP", "false", "allow plain http webhook receivers in production (development always allows them)", false,
			boolVar(func(c *Config) *bool { return &c.WebhookAllowHTTP })},
		{"CHATFLEET_WEBHOOK_TIMEOUT", "10s", "one delivery attempt, connect to the receiver's last byte (connecting alone: at most 5 s)", false,
			durationVar(func(c *Config) *time.Duration { return &c.WebhookTimeout }, 100*time.Millisecond)},
		{"CHATFLEET_WEBHOOK_RETRY_BASE", "5s", "delay before a failed delivery's first retry; it doubles after each (capped at 1h, with jitter), a receiver's Retry-After taken when longer", false,
			durationVar(func(c *Config) *time.Duration { return &c.WebhookRetryBase }, 10*time.Millisecond)},
		{"CHATFLEET_WEBHOOK_RETRY_FOR", "24h", "how long a delivery is retried before it is archived (operators re-deliver it from the console or the admin API)", false,
			durationVar(func(c *Config) *time.Duration { return &c.WebhookRetryFor }, time.Second)},
		{"CHATFLEET_WEBHOOK_CONCURRENCY", "20", "webhook deliveries in flight per worker process, apart from its chat jobs", false,
			intVar(func(c *Config) *int { return &c.WebhookConcurrency }, 1)},
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
		{"CHATFLEET_SIM_STAMPS", "false", "each word of the simulated reply is the time the simulated model produced it (Unix µs), so a follower can tell how long each took to reach it", false,
			boolVar(func(c *Config) *bool { return &c.SimStamps })},
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
