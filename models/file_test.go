package models

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const exampleYAML = `
default_model: alpha            # used when a request names no model
models:
  - name: alpha
    deployments:
      - id: alpha-east
        provider: openai
        model: gpt-4o-mini
        base_url: https://east.example.com/v1
        api_key_env: OPENAI_KEY_EAST
        rpm: 1200
        tpm: 0
        concurrency: 0
        weight: 1
      - provider: openai
        api_key_env: OPENAI_KEY_WEST
        tpm: 50000
    fallbacks: [beta]
    price: {input: 0.15, output: 0.60}
  - name: beta
    deployments:
      - provider: anthropic
        model: claude-haiku-4-5
        api_key_env: ANTHROPIC_KEY
        rpm: 50
      - provider: openai
        model: llama3.1
        base_url: http://vllm:8000/v1
      - provider: sim
`

const exampleJSON = `{
  "default_model": "alpha",
  "models": [
    {"name": "alpha",
     "deployments": [
       {"id": "alpha-east", "provider": "openai", "model": "gpt-4o-mini", "base_url": "https://east.example.com/v1",
        "api_key_env": "OPENAI_KEY_EAST", "rpm": 1200, "tpm": 0, "concurrency": 0, "weight": 1},
       {"provider": "openai", "api_key_env": "OPENAI_KEY_WEST", "tpm": 50000}],
     "fallbacks": ["beta"],
     "price": {"input": 0.15, "output": 0.60}},
    {"name": "beta",
     "deployments": [
       {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_KEY", "rpm": 50},
       {"provider": "openai", "model": "llama3.1", "base_url": "http://vllm:8000/v1"},
       {"provider": "sim"}]}
  ]
}`

var keys = map[string]string{"OPENAI_KEY_EAST": "sk-east", "OPENAI_KEY_WEST": "sk-west", "ANTHROPIC_KEY": "sk-ant"}

func getenv(k string) string { return keys[k] }

func TestExampleParses(t *testing.T) {
	want := &Set{
		Default: "alpha",
		Models: []Model{
			{
				Name: "alpha",
				Deployments: []Deployment{
					{ID: "alpha-east", Provider: "openai", Model: "gpt-4o-mini", BaseURL: "https://east.example.com/v1",
						APIKey: "sk-east", APIKeyEnv: "OPENAI_KEY_EAST", RPM: 1200, Weight: 1},
					// Defaults: id <name>-<1-based index>, the public name as model, weight = tpm.
					{ID: "alpha-2", Provider: "openai", Model: "alpha", APIKey: "sk-west", APIKeyEnv: "OPENAI_KEY_WEST", TPM: 50000, Weight: 50000},
				},
				Fallbacks: []string{"beta"},
				Price:     &Price{Input: 0.15, Output: 0.60},
			},
			{
				Name: "beta",
				Deployments: []Deployment{
					{ID: "beta-1", Provider: "anthropic", Model: "claude-haiku-4-5", APIKey: "sk-ant", APIKeyEnv: "ANTHROPIC_KEY", RPM: 50, Weight: 50},
					// No key: a local OpenAI-compatible server.
					{ID: "beta-2", Provider: "openai", Model: "llama3.1", BaseURL: "http://vllm:8000/v1", Weight: 1},
					{ID: "beta-3", Provider: "sim", Model: "beta", Weight: 1},
				},
			},
		},
	}
	for name, src := range map[string]string{"yaml": exampleYAML, "json": exampleJSON} {
		t.Run(name, func(t *testing.T) {
			got, err := Parse([]byte(src), getenv)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestDefaultIsTheFirstModel(t *testing.T) {
	s, err := Parse([]byte("models:\n  - name: b\n    deployments: [{provider: sim}]\n  - name: a\n    deployments: [{provider: sim}]\n"), getenv)
	if err != nil {
		t.Fatal(err)
	}
	if s.Default != "b" || strings.Join(s.Names(), ",") != "b,a" {
		t.Fatalf("default %q, names %v", s.Default, s.Names())
	}
	if m, ok := s.Lookup(""); !ok || m.Name != "b" {
		t.Fatalf("lookup of no name: %v %v", m.Name, ok)
	}
	if _, ok := s.Lookup("c"); ok {
		t.Fatal("an unknown name was found")
	}
}

// Each problem is named with its entry and field.
func TestValidationNamesEntryAndField(t *testing.T) {
	const beta = "  - name: beta\n    deployments:\n"
	cases := []struct {
		name, src, want string
	}{
		{"empty file", "", "the file is empty"},
		{"only comments", "# nothing\n", "the file is empty"},
		{"no models", "models: []\n", "models: lists no model"},
		{"not a mapping", "[1, 2]\n", "the file: must be a mapping"},
		{"unknown top field", "modles: []\nmodels: [{name: a, deployments: [{provider: sim}]}]\n", "modles: unknown field"},
		{"unknown model field", "models:\n  - name: a\n    fallback: [b]\n    deployments: [{provider: sim}]\n", `models[0] "a": fallback: unknown field`},
		{"unknown deployment field", "models:\n" + beta + "      - provider: sim\n        rpn: 5\n", `models[0] "beta": deployments[0].rpn: unknown field`},
		{"unknown price field", "models:\n  - name: a\n    price: {in: 1}\n    deployments: [{provider: sim}]\n", `models[0] "a": price.in: unknown field`},
		{"field twice", "models:\n" + beta + "      - provider: sim\n        provider: sim\n", `models[0] "beta": deployments[0].provider: given twice`},
		{"name required", "models:\n  - deployments: [{provider: sim}]\n", "models[0]: name: required"},
		{"unsafe name", "models:\n  - name: 'a b'\n    deployments: [{provider: sim}]\n", `models[0] "a b": name: "a b" must be 1 to 64`},
		{"long name", "models:\n  - name: " + strings.Repeat("x", 65) + "\n    deployments: [{id: d, provider: sim}]\n", "must be 1 to 64"},
		{"duplicate names", "models:\n  - name: a\n    deployments: [{provider: sim}]\n  - name: a\n    deployments: [{id: other, provider: sim}]\n", `models[1] "a": name: "a" is listed twice (first as models[0])`},
		{"no deployments", "models:\n  - name: a\n", `models[0] "a": deployments: required`},
		{"empty deployments", "models:\n  - name: a\n    deployments: []\n", `models[0] "a": deployments: required`},
		{"provider required", "models:\n" + beta + "      - model: x\n", `models[0] "beta": deployments[0].provider: required`},
		{"unknown provider", "models:\n" + beta + "      - provider: gemini\n", `models[0] "beta": deployments[0].provider: must be openai, anthropic or sim, got "gemini"`},
		{"bad base_url", "models:\n" + beta + "      - provider: openai\n        base_url: ftp://x\n", `models[0] "beta": deployments[0].base_url: must be an http:// or https:// URL`},
		{"duplicate ids", "models:\n  - name: a\n    deployments: [{id: d1, provider: sim}]\n" + beta + "      - provider: sim\n        id: d1\n", `models[1] "beta": deployments[0].id: "d1" is already the id of models[0] "a": deployments[0]`},
		{"default id collides", "models:\n  - name: a\n    deployments: [{provider: sim}, {id: a-1, provider: sim}]\n", `models[0] "a": deployments[1].id: "a-1" is already the id`},
		{"unsafe id", "models:\n" + beta + "      - provider: sim\n        id: 'x{y}'\n", `models[0] "beta": deployments[0].id: "x{y}" must be 1 to 64`},
		{"missing key variable", "models:\n" + beta + "      - provider: anthropic\n        api_key_env: NOT_SET_KEY\n", `models[0] "beta": deployments[0].api_key_env: variable NOT_SET_KEY is not set`},
		{"key pasted as the name", "models:\n" + beta + "      - provider: openai\n        api_key_env: sk-proj-abc123\n", `models[0] "beta": deployments[0].api_key_env: must name the environment variable`},
		{"negative rpm", "models:\n  - name: alpha\n    deployments: [{provider: sim}]\n" + beta + "      - provider: sim\n        rpm: -1\n", `models[1] "beta": deployments[0].rpm: must not be negative`},
		{"negative tpm", "models:\n" + beta + "      - provider: sim\n        tpm: -5\n", `models[0] "beta": deployments[0].tpm: must not be negative`},
		{"negative concurrency", "models:\n" + beta + "      - provider: sim\n        concurrency: -2\n", `models[0] "beta": deployments[0].concurrency: must not be negative`},
		{"rpm not a number", "models:\n" + beta + "      - provider: sim\n        rpm: fast\n", `models[0] "beta": deployments[0].rpm: must be a whole number`},
		{"zero weight", "models:\n" + beta + "      - provider: sim\n        weight: 0\n", `models[0] "beta": deployments[0].weight: must be a number more than 0`},
		{"NaN weight", "models:\n" + beta + "      - provider: sim\n        weight: .nan\n", `models[0] "beta": deployments[0].weight: must be a number more than 0`},
		{"negative weight", "models:\n" + beta + "      - provider: sim\n        weight: -1\n", `models[0] "beta": deployments[0].weight: must be a number more than 0`},
		{"negative price", "models:\n  - name: a\n    price: {input: -0.1, output: 1}\n    deployments: [{provider: sim}]\n", `models[0] "a": price.input: must not be negative`},
		{"unknown fallback", "models:\n  - name: a\n    fallbacks: [b, zeta]\n    deployments: [{provider: sim}]\n  - name: b\n    deployments: [{provider: sim}]\n", `models[0] "a": fallbacks[1]: "zeta" is not a model of this file`},
		{"fallback twice", "models:\n  - name: a\n    fallbacks: [b, b]\n    deployments: [{provider: sim}]\n  - name: b\n    deployments: [{provider: sim}]\n", `models[0] "a": fallbacks[1]: "b" is listed twice`},
		{"fallback cycle", "models:\n  - name: a\n    fallbacks: [b]\n    deployments: [{provider: sim}]\n  - name: b\n    fallbacks: [c]\n    deployments: [{provider: sim}]\n  - name: c\n    fallbacks: [a]\n    deployments: [{provider: sim}]\n", `models[0] "a": fallbacks: form a cycle a → b → c → a`},
		{"fallback to itself", "models:\n  - name: a\n    fallbacks: [a]\n    deployments: [{provider: sim}]\n", `models[0] "a": fallbacks: form a cycle a → a`},
		{"unknown default", "default_model: zeta\nmodels:\n  - name: a\n    deployments: [{provider: sim}]\n", `default_model: "zeta" is not a model of this file`},
		{"syntax error", "models: [\n", "yaml:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse([]byte(c.src), getenv)
			if err == nil {
				t.Fatalf("accepted: %+v", s)
			}
			if s != nil {
				t.Errorf("a refused file returned a list: %+v", s)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
		})
	}
}

// Zero quotas mean no limit, as with the variables; a sim deployment needs no
// key even when it names an unset variable.
func TestZeroQuotasAndKeylessDeploymentsAreAccepted(t *testing.T) {
	s, err := Parse([]byte("models:\n  - name: a\n    deployments:\n      - {provider: sim, rpm: 0, tpm: 0, concurrency: 0, api_key_env: UNSET_KEY}\n      - {provider: openai, base_url: 'http://ollama:11434/v1', rpm: 60}\n"), getenv)
	if err != nil {
		t.Fatal(err)
	}
	if d := s.Models[0].Deployments; d[0].Weight != 1 || d[0].APIKey != "" || d[1].Weight != 60 || d[1].APIKey != "" {
		t.Fatalf("deployments: %+v", d)
	}
}

func TestEveryProblemIsReportedAtOnce(t *testing.T) {
	src := `
default_model: nope
models:
  - name: alpha
    deployments:
      - provider: openai
        rpm: -1
        api_key_env: MISSING_ONE
    fallbacks: [beta]
  - name: beta
    colour: blue
    deployments:
      - provider: anthropic
        weight: 0
    fallbacks: [alpha, ghost]
`
	_, err := Parse([]byte(src), getenv)
	if err == nil {
		t.Fatal("accepted")
	}
	want := []string{
		`models[0] "alpha": deployments[0].rpm: must not be negative`,
		`models[0] "alpha": deployments[0].api_key_env: variable MISSING_ONE is not set`,
		`models[1] "beta": colour: unknown field`,
		`models[1] "beta": deployments[0].weight: must be a number more than 0`,
		`models[1] "beta": fallbacks[1]: "ghost" is not a model of this file`,
		`models[0] "alpha": fallbacks: form a cycle alpha → beta → alpha`,
		`default_model: "nope" is not a model of this file`,
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(lines), len(want), err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("missing %q in:\n%s", w, err)
		}
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "models.json")
	if err := os.WriteFile(path, []byte(exampleJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Load(path, getenv)
	if err != nil || strings.Join(s.Names(), ",") != "alpha,beta" {
		t.Fatalf("%v %v", s, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), getenv); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("a missing file: %v", err)
	}
}
