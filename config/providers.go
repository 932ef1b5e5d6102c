package config

import (
	"fmt"
	"strconv"
	"strings"
)

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
