package config

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/chatfleet/chatfleet/tasks"
)

// WebhookEndpoint is one entry of CHATFLEET_WEBHOOKS_FILE.
type WebhookEndpoint struct {
	Tenant string   `json:"tenant"`
	URL    string   `json:"url"`    // empty: the entry only gives the tenant's secret for per-job webhook_url
	Secret string   `json:"secret"` // whsec_<base64 of at least 24 bytes>
	Events []string `json:"events"` // empty: every event
	// IncludeResult puts the job's result in job.* events (up to 64 KiB).
	IncludeResult bool `json:"include_result"`
}

// minSecretBytes is the shortest secret the OpenAI SDKs accept.
const minSecretBytes = 24

// loadWebhooks reads and validates the endpoints file; every problem is named
// with the entry's index.
func loadWebhooks(path string) ([]WebhookEndpoint, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var eps []WebhookEndpoint
	if err := dec.Decode(&eps); err != nil {
		return nil, fmt.Errorf("%s: must be a JSON array of {\"tenant\",\"url\",\"secret\",\"events\",\"include_result\"}: %w", path, err)
	}
	var errs []error
	for i, ep := range eps {
		if err := ep.validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: entry %d: %w", path, i, err))
		}
	}
	return eps, errors.Join(errs...)
}

func (ep WebhookEndpoint) validate() error {
	if strings.TrimSpace(ep.Tenant) == "" {
		return errors.New("tenant: required")
	}
	if ep.URL != "" {
		if err := tasks.ValidWebhookURL(ep.URL); err != nil {
			return fmt.Errorf("url: %w", err)
		}
	}
	if err := validSecret(ep.Secret); err != nil {
		return fmt.Errorf("secret: %w", err)
	}
	for _, e := range ep.Events {
		if !slices.Contains(tasks.WebhookEvents, e) {
			return fmt.Errorf("events: unknown event %q (known: %s)", e, strings.Join(tasks.WebhookEvents, ", "))
		}
	}
	return nil
}

func validSecret(s string) error {
	enc, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return errors.New(`must start with "whsec_" (whsec_ and the base64 of at least 24 random bytes)`)
	}
	key, err := base64.StdEncoding.Strict().DecodeString(enc)
	if err != nil || base64.StdEncoding.EncodeToString(key) != enc {
		return errors.New("must be whsec_ followed by canonical standard base64")
	}
	if len(key) < minSecretBytes {
		return fmt.Errorf("decodes to %d bytes, needs at least %d", len(key), minSecretBytes)
	}
	return nil
}
