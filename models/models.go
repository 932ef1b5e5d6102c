// Package models is the fleet's list of public models and the deployments
// that serve each: read from CHATFLEET_MODELS_FILE (file.go), or made from
// the CHATFLEET_LLM_* variables when there is no file (Legacy), and re-read
// while the processes run (watch.go).
package models

// Set is the model list in force.
type Set struct {
	// Default is the model a request that names none gets.
	Default string
	Models  []Model
	// Legacy: made from the CHATFLEET_LLM_* variables. Its one model accepts
	// any name a request sends (it renames the first deployment's model, as
	// before the models file), and its deployments are tried in order.
	Legacy bool
}

// Model is one public model.
type Model struct {
	Name        string // what clients send as `model`
	Deployments []Deployment
	Fallbacks   []string // public models tried in order when no deployment of this one can answer
	Price       *Price   // nil: CHATFLEET_MODEL_PRICES decides
}

// Deployment is one upstream that serves a model.
type Deployment struct {
	ID       string // names it in metrics, logs, traces and breaker keys
	Provider string // openai, anthropic or sim
	Model    string // the provider's model name
	BaseURL  string
	APIKey   string // read from the file's api_key_env variable
	// APIKeyEnv names that variable ("" : none), so that `config check` knows it.
	APIKeyEnv string
	RPM, TPM  int // quota (0: none)
	// Concurrency caps calls in flight (0: learned from its 429s).
	Concurrency int
	Weight      float64 // share of the model's traffic
}

// Price is US dollars per million tokens.
type Price struct{ Input, Output float64 }

// Names are the public model names, in the file's order.
func (s *Set) Names() []string {
	out := make([]string, len(s.Models))
	for i, m := range s.Models {
		out[i] = m.Name
	}
	return out
}

// Lookup returns the public model named name ("" : the default). A legacy
// set answers every name with its one model.
func (s *Set) Lookup(name string) (Model, bool) {
	if name == "" {
		name = s.Default
	}
	for _, m := range s.Models {
		if m.Name == name {
			return m, true
		}
	}
	if s.Legacy && len(s.Models) == 1 {
		return s.Models[0], true
	}
	return Model{}, false
}
