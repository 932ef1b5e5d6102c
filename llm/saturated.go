package llm

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/chatfleet/chatfleet/internal/rkeys"
)

// Saturated describes the deployments that made calls wait for their
// capacity in the last few seconds, e.g. "openai is at its limit of 500
// requests per minute" ("model alpha's deployment alpha-east is …" with a
// models file), for the queue status advice: more workers do not help them.
func Saturated(ctx context.Context, rdb redis.UniversalClient, specs []Spec) ([]string, error) {
	names := ProviderNames(specs)
	var out []string
	for i, name := range names {
		why, err := rdb.Get(ctx, rkeys.ProviderSaturated(name)).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, err
		}
		lim := specs[i].Limits
		who := name
		if specs[i].Public != "" {
			who = fmt.Sprintf("model %s's deployment %s", specs[i].Public, name)
		}
		switch {
		case why == "rpm" || (why == "rate" && lim.RPM > 0):
			out = append(out, fmt.Sprintf("%s is at its limit of %d requests per minute", who, lim.RPM))
		case why == "tpm" || why == "rate":
			out = append(out, fmt.Sprintf("%s is at its limit of %d tokens per minute", who, lim.TPM))
		case why == "concurrency" && lim.Concurrency > 0:
			out = append(out, fmt.Sprintf("%s is at its limit of %d calls at once", who, lim.Concurrency))
		case why == "concurrency":
			learned, _ := rdb.HGet(ctx, rkeys.ProviderAdaptive(name), "limit").Float64()
			out = append(out, fmt.Sprintf("%s is at the %d calls at once it accepts (learned from its 429s)", who, int(learned)))
		case why == "paused":
			out = append(out, fmt.Sprintf("%s answered 429 and asked the fleet to wait", who))
		}
	}
	return out, nil
}

// LimiterScripts names the SHA1 of each capacity script, for counting the
// limiter's Redis round trips.
func LimiterScripts() map[string]string {
	return map[string]string{acquireScript.Hash(): "acquire", releaseScript.Hash(): "release", rateLimitedScript.Hash(): "rate-limited"}
}
