// Package config loads and validates chatfleet's settings from the environment.
//
// Parsing is strict: a malformed value is an error naming the variable, never a
// silent default. Load reports every problem at once.
package config

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/chatfleet/chatfleet/models"
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
	TenantMaxJobs   int                // unfinished jobs per tenant; 0: unlimited
	TenantWeights   map[string]float64 // tenants' shares while several have work; unlisted: 1
	Models          []string           // allowed models; empty: any
	ModelsFile      string             // CHATFLEET_MODELS_FILE
	ModelSet        *models.Set        // loaded from ModelsFile; nil without it
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
	RateMargin      float64       // fraction under a configured rate the fleet sends at
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
	// StreamUnfollowedFlushInterval batches a job's deltas while nobody follows it live.
	StreamUnfollowedFlushInterval time.Duration
	SSEHeartbeat                  time.Duration
	StreamMaxDuration             time.Duration
	TenantMaxStreams              int
	MaxInflightBytes              int64
	TenantMaxInflightBytes        int64
	// The Batch API's files: their size, a batch's lines, their retention.
	FilesMaxBytes    int64
	BatchMaxRequests int
	FilesRetention   time.Duration
	// ResponsesMaxConversationBytes caps a /v1/responses conversation.
	ResponsesMaxConversationBytes int
	AdminKey                      string
	LogLevel                      string

	UsageRetention time.Duration    // how long the usage ledger keeps a month
	ModelPrices    map[string]Price // US dollars per million tokens, by model
	TenantBudgets  map[string]Budget

	WebhooksFile        string
	Webhooks            []WebhookEndpoint // from WebhooksFile
	WebhookAllowPrivate bool              // loopback, private and link-local receivers allowed
	WebhookAllowHTTP    bool              // plain http receivers allowed in production
	WebhookTimeout      time.Duration     // one delivery attempt, connect to last byte
	WebhookRetryBase    time.Duration     // the first retry's delay; doubles after each
	WebhookRetryFor     time.Duration     // how long a delivery is retried before it is archived
	WebhookConcurrency  int               // deliveries in flight per worker

	SimLatency    time.Duration
	SimTokenDelay time.Duration
	SimTokens     int
	SimStamps     bool
	SimFailRate   float64
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
	if c.TenantMaxInflightBytes < 0 {
		c.TenantMaxInflightBytes = c.MaxInflightBytes / 4
	}
	if fb, err := parseFallbacks(c.LLMFallbacks, getenv); err != nil {
		errs = append(errs, fmt.Errorf("CHATFLEET_LLM_FALLBACKS: %w", err))
	} else {
		c.Fallbacks = fb
	}
	if c.ModelsFile != "" {
		errs = append(errs, c.loadModels(getenv)...)
	} else if c.LLMProvider != "sim" && c.LLMModel == "" {
		errs = append(errs, fmt.Errorf("CHATFLEET_LLM_MODEL: required for the %s provider", c.LLMProvider))
	}
	if c.RedisURL == "" && role != RoleStandalone {
		errs = append(errs, fmt.Errorf("CHATFLEET_REDIS_URL: required for %s (only api --standalone embeds Redis)", role))
	}
	if c.WebhooksFile != "" {
		eps, err := loadWebhooks(c.WebhooksFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("CHATFLEET_WEBHOOKS_FILE: %w", err))
		}
		c.Webhooks = eps
	}
	for t, b := range c.TenantBudgets {
		if b.USD > 0 && len(c.ModelPrices) == 0 && !c.filePrices() {
			errs = append(errs, fmt.Errorf("CHATFLEET_TENANT_BUDGETS: %s: a dollar budget needs CHATFLEET_MODEL_PRICES or prices in CHATFLEET_MODELS_FILE", t))
		}
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
	if c.ModelsFile == "" {
		if c.LLMProvider == "sim" {
			errs = append(errs, errors.New("CHATFLEET_LLM_PROVIDER: production refuses the simulated LLM"))
		}
		for _, f := range c.Fallbacks {
			if f.Kind == "sim" {
				errs = append(errs, errors.New("CHATFLEET_LLM_FALLBACKS: production refuses the simulated LLM"))
				break
			}
		}
	}
	if c.ModelSet != nil {
		for i, m := range c.ModelSet.Models {
			for j, d := range m.Deployments {
				if d.Provider == "sim" {
					errs = append(errs, fmt.Errorf("CHATFLEET_MODELS_FILE: models[%d] %q: deployments[%d] %q: production refuses the simulated LLM", i, m.Name, j, d.ID))
				}
			}
		}
	}
	if len(c.APIKeys) == 0 {
		errs = append(errs, errors.New("CHATFLEET_API_KEYS: production needs at least one tenant:key pair"))
	}
	for i, ep := range c.Webhooks {
		if strings.HasPrefix(ep.URL, "http://") && !c.WebhookAllowHTTP {
			errs = append(errs, fmt.Errorf("CHATFLEET_WEBHOOKS_FILE: entry %d: url: production sends webhooks over https only (CHATFLEET_WEBHOOK_ALLOW_HTTP=true allows http)", i))
		}
	}
	if len(c.Models) == 0 && c.ModelsFile == "" {
		errs = append(errs, errors.New("CHATFLEET_MODELS: production needs the list of models tenants may ask for (any other string would reach the provider)"))
	}
	return errs
}

// loadModels reads CHATFLEET_MODELS_FILE into ModelSet; each of its problems
// is one error, so that `config check` lists them all.
func (c *Config) loadModels(getenv func(string) string) []error {
	var errs []error
	set, err := models.Load(c.ModelsFile, getenv)
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			errs = append(errs, fmt.Errorf("CHATFLEET_MODELS_FILE: %w", e))
		}
	} else if err != nil {
		errs = append(errs, fmt.Errorf("CHATFLEET_MODELS_FILE: %w", err))
	}
	c.ModelSet = set
	if len(c.Models) > 0 {
		errs = append(errs, errors.New("CHATFLEET_MODELS: the models file lists the models; unset CHATFLEET_MODELS"))
	}
	return errs
}

// filePrices tells whether the models file prices any model.
func (c Config) filePrices() bool {
	if c.ModelSet == nil {
		return false
	}
	for _, m := range c.ModelSet.Models {
		if m.Price != nil {
			return true
		}
	}
	return false
}
