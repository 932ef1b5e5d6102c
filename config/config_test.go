package config

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(RoleStandalone, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != "127.0.0.1:8080" || c.WorkerConcurrency != 100 || c.QueueAlertThreshold != 500 ||
		c.JobRetention != 24*time.Hour || c.MaxRetries != 3 || c.LLMProvider != "sim" ||
		c.QueuePollInterval != 20*time.Millisecond || c.BreakerFailures != 5 || c.Env != EnvDevelopment {
		t.Fatalf("defaults: %+v", c)
	}
	if a, _ := Load(RoleAPI, env(map[string]string{"CHATFLEET_REDIS_URL": "redis://r:6379"})); a.HTTPAddr != ":8080" {
		t.Fatalf("api listens on %q", a.HTTPAddr)
	}
	w, err := Load(RoleWorker, env(map[string]string{"CHATFLEET_REDIS_URL": "redis://r:6379"}))
	if err != nil || w.HTTPAddr != ":8081" {
		t.Fatalf("worker defaults: %v %+v", err, w)
	}
}

func TestMalformedValuesNameTheirVariable(t *testing.T) {
	cases := map[string]string{
		"CHATFLEET_WORKER_CONCURRENCY":    "abc",
		"CHATFLEET_QUEUE_ALERT_THRESHOLD": "0",
		"CHATFLEET_JOB_RETENTION":         "1 day",
		"CHATFLEET_LLM_TIMEOUT":           "-1s",
		"CHATFLEET_SIM_FAIL_RATE":         "1.5",
		"CHATFLEET_LOG_LEVEL":             "loud",
		"CHATFLEET_ENV":                   "prod",
		"CHATFLEET_HTTP_ADDR":             "8080",
		"CHATFLEET_REDIS_URL":             "http://localhost:6379",
		"CHATFLEET_API_KEYS":              "nocolon",
		"CHATFLEET_LLM_PROVIDER":          "gpt",
		"CHATFLEET_LLM_BASE_URL":          "ftp://x",
		"CHATFLEET_MAX_RETRIES":           "-1",
		"CHATFLEET_TENANT_WEIGHTS":        "acme:0",
	}
	for name, val := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Load(RoleStandalone, env(map[string]string{name: val}))
			if err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("%s=%q: error %v does not name the variable", name, val, err)
			}
		})
	}
}

func TestEveryProblemIsReportedAtOnce(t *testing.T) {
	_, err := Load(RoleWorker, env(map[string]string{
		"CHATFLEET_WORKER_CONCURRENCY": "x", "CHATFLEET_MAX_RETRIES": "y", "CHATFLEET_SIM_TOKENS": "z",
	}))
	if err == nil {
		t.Fatal("no error")
	}
	for _, v := range []string{"CHATFLEET_WORKER_CONCURRENCY", "CHATFLEET_MAX_RETRIES", "CHATFLEET_SIM_TOKENS", "CHATFLEET_REDIS_URL"} {
		if !strings.Contains(err.Error(), v) {
			t.Errorf("error does not name %s: %v", v, err)
		}
	}
}

func TestProductionRefusals(t *testing.T) {
	_, err := Load(RoleStandalone, env(map[string]string{"CHATFLEET_ENV": "production"}))
	for _, v := range []string{"CHATFLEET_REDIS_URL", "CHATFLEET_LLM_PROVIDER", "CHATFLEET_API_KEYS", "CHATFLEET_MODELS"} {
		if err == nil || !strings.Contains(err.Error(), v) {
			t.Errorf("production error does not name %s: %v", v, err)
		}
	}
}

func TestAPIKeysNeverEchoed(t *testing.T) {
	_, err := Load(RoleStandalone, env(map[string]string{"CHATFLEET_API_KEYS": "acme:short"}))
	if err == nil || strings.Contains(err.Error(), "short") {
		t.Fatalf("error %v should reject the key without quoting it", err)
	}
	hashed := sha256.Sum256([]byte("fedcba9876543210"))
	c, err := Load(RoleStandalone, env(map[string]string{"CHATFLEET_API_KEYS": "acme:0123456789abcdef, beta:sha256:" + hex.EncodeToString(hashed[:])}))
	if err != nil || c.APIKeys[sha256.Sum256([]byte("0123456789abcdef"))] != "acme" || c.APIKeys[hashed] != "beta" {
		t.Fatalf("keys: %v %v", err, c.APIKeys)
	}
	if _, err := Load(RoleStandalone, env(map[string]string{"CHATFLEET_API_KEYS": "acme:sha256:abc"})); err == nil {
		t.Fatal("a short sha256 digest was accepted")
	}
	sum := c.Summary(RoleStandalone, env(map[string]string{"CHATFLEET_API_KEYS": "acme:0123456789abcdef"}))
	if strings.Contains(sum, "0123456789abcdef") {
		t.Fatal("summary shows a secret")
	}
}

// .env.example must list every variable with its default.
func TestEnvExampleListsEveryVariable(t *testing.T) {
	f, err := os.Open("../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	listed := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			listed[k] = v
		}
	}
	for _, v := range Vars(RoleAPI) {
		got, ok := listed[v.Name]
		if !ok {
			t.Errorf(".env.example lacks %s", v.Name)
		} else if got != v.Default {
			t.Errorf(".env.example has %s=%q, default is %q", v.Name, got, v.Default)
		}
	}
}

func TestUnknownVariablesAreNamed(t *testing.T) {
	got := Unknown([]string{
		"CHATFLEET_WORKER_CONCURENCY=5", "CHATFLEET_LOG_LEVEL=debug", "PATH=/bin",
		"CHATFLEET_LLM_FALLBACKS=openai:m#CHATFLEET_FALLBACK_KEY", "CHATFLEET_FALLBACK_KEY=k", "CHATFLEET_WHATEVER=1",
	})
	want := []string{
		"CHATFLEET_WHATEVER: unknown variable, ignored",
		"CHATFLEET_WORKER_CONCURENCY: unknown variable, ignored; did you mean CHATFLEET_WORKER_CONCURRENCY?",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got %q", got)
	}
}

func TestProviderLimits(t *testing.T) {
	c, err := Load(RoleWorker, env(map[string]string{
		"CHATFLEET_REDIS_URL": "redis://r:6379", "CHATFLEET_LLM_RPM": "600", "CHATFLEET_LLM_MAX_CONCURRENCY": "8",
		"CHATFLEET_LLM_FALLBACKS": "openai:m@http://x/v1#K;rpm=60;tpm=9000;concurrency=2,sim", "K": "key",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Primary().Limits; p != (Limits{RPM: 600, Concurrency: 8}) {
		t.Fatalf("primary limits %+v", p)
	}
	if f := c.Fallbacks[0]; f.Limits != (Limits{RPM: 60, TPM: 9000, Concurrency: 2}) || f.APIKey != "key" || f.BaseURL != "http://x/v1" {
		t.Fatalf("fallback %+v", f)
	}
	if c.MaxRetryDelay != 5*time.Minute || c.Fallbacks[1].Limits != (Limits{}) {
		t.Fatalf("defaults: %v %+v", c.MaxRetryDelay, c.Fallbacks[1])
	}
	for _, bad := range []string{"sim;rpm=x", "sim;burst=3", "sim;rpm=-1"} {
		_, err := Load(RoleWorker, env(map[string]string{"CHATFLEET_REDIS_URL": "redis://r:6379", "CHATFLEET_LLM_FALLBACKS": bad}))
		if err == nil || !strings.Contains(err.Error(), "CHATFLEET_LLM_FALLBACKS") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestRedisURLForms(t *testing.T) {
	for _, good := range []string{"redis://r:6379/0", "rediss://u:p@r:6380", "redis-sentinel://s1:26379,s2:26379?master=m",
		"redis-cluster://n1:7000,n2:7001,n3:7002", "rediss-cluster://user:secret@n1:7000"} {
		if _, err := Load(RoleWorker, env(map[string]string{"CHATFLEET_REDIS_URL": good})); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"redis-cluster://", "redis-cluster://n1", "redis-cluster://n1:7000,,n2:7001",
		"redis-cluster://n1:70000", "redis-cluster://n1:7000/0", "memcache://m:11211"} {
		_, err := Load(RoleWorker, env(map[string]string{"CHATFLEET_REDIS_URL": bad}))
		if err == nil || !strings.Contains(err.Error(), "CHATFLEET_REDIS_URL") {
			t.Errorf("%q: %v", bad, err)
		}
		if err != nil && strings.Contains(bad, "secret") && strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: the error quotes the password: %v", bad, err)
		}
	}
}

func TestWebhooksFileIsValidated(t *testing.T) {
	secret := "whsec_" + strings.Repeat("QUJD", 8) // 24 bytes
	write := func(body string) string {
		p := filepath.Join(t.TempDir(), "webhooks.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write(`[{"tenant":"acme","url":"https://acme.example/hooks","secret":"` + secret + `","events":["job.succeeded"]},{"tenant":"acme","secret":"` + secret + `"}]`)
	c, err := Load(RoleWorker, env(map[string]string{"CHATFLEET_REDIS_URL": "redis://x:6379", "CHATFLEET_WEBHOOKS_FILE": good}))
	if err != nil || len(c.Webhooks) != 2 || c.Webhooks[0].Events[0] != "job.succeeded" {
		t.Fatalf("a valid file: %+v %v", c.Webhooks, err)
	}
	for body, want := range map[string]string{
		`{"tenant":"acme"}`:                                                         "JSON array",
		`[{"tenant":"","secret":"` + secret + `"}]`:                                 "entry 0: tenant",
		`[{"tenant":"a","url":"ftp://x/y","secret":"` + secret + `"}]`:              "entry 0: url",
		`[{"tenant":"a","secret":"hunter2"}]`:                                       `must start with "whsec_"`,
		`[{"tenant":"a","secret":"whsec_QUJD"}]`:                                    "at least 24",
		`[{"tenant":"a","secret":"` + secret + `","events":["job.done"]}]`:          `unknown event "job.done"`,
		`[{"tenant":"a","secret":"` + secret + `","colour":"red"}]`:                 "colour",
		`[{"tenant":"a","url":"https://u:p@x.example/","secret":"` + secret + `"}]`: "credentials",
	} {
		_, err := Load(RoleWorker, env(map[string]string{"CHATFLEET_REDIS_URL": "redis://x:6379", "CHATFLEET_WEBHOOKS_FILE": write(body)}))
		if err == nil || !strings.Contains(err.Error(), "CHATFLEET_WEBHOOKS_FILE") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming %q", body, err, want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
	_, err = Load(RoleWorker, env(map[string]string{"CHATFLEET_REDIS_URL": "redis://x:6379", "CHATFLEET_WEBHOOKS_FILE": "/nonexistent/webhooks.json"}))
	if err == nil || !strings.Contains(err.Error(), "CHATFLEET_WEBHOOKS_FILE") {
		t.Fatalf("a missing file: %v", err)
	}
}

func TestPricesAndBudgets(t *testing.T) {
	c, err := Load(RoleWorker, env(map[string]string{"CHATFLEET_REDIS_URL": "redis://x:6379",
		"CHATFLEET_MODEL_PRICES":   "gpt-4o-mini:input=0.15,output=0.6; claude:input=3,output=15",
		"CHATFLEET_TENANT_BUDGETS": "acme:tokens=1000000/day;globex:usd=50/month, soft=80%"}))
	if err != nil || c.ModelPrices["claude"] != (Price{3, 15}) || c.TenantBudgets["acme"] != (Budget{Tokens: 1000000}) ||
		c.TenantBudgets["globex"] != (Budget{USD: 50, Month: true, SoftPercent: 80}) {
		t.Fatalf("%+v %+v %v", c.ModelPrices, c.TenantBudgets, err)
	}
	for name, vars := range map[string]map[string]string{
		"CHATFLEET_MODEL_PRICES":       {"CHATFLEET_MODEL_PRICES": "gpt:input=1"},
		"CHATFLEET_MODEL_PRICES ":      {"CHATFLEET_MODEL_PRICES": "gpt:input=-1,output=2"},
		"CHATFLEET_TENANT_BUDGETS":     {"CHATFLEET_TENANT_BUDGETS": "acme:tokens=10/week"},
		"CHATFLEET_TENANT_BUDGETS ":    {"CHATFLEET_TENANT_BUDGETS": "acme:usd=5/day"}, // no prices
		"CHATFLEET_TENANT_BUDGETS  ":   {"CHATFLEET_TENANT_BUDGETS": "acme:tokens=0/day"},
		"CHATFLEET_TENANT_BUDGETS   ":  {"CHATFLEET_TENANT_BUDGETS": "acme:tokens=10/day,soft=100%"},
		"CHATFLEET_TENANT_BUDGETS    ": {"CHATFLEET_TENANT_BUDGETS": "acme:tokens=10/day,alert=50%"},
	} {
		vars["CHATFLEET_REDIS_URL"] = "redis://x:6379"
		if _, err := Load(RoleWorker, env(vars)); err == nil || !strings.Contains(err.Error(), strings.TrimSpace(name)) {
			t.Errorf("%v: %v", vars, err)
		}
	}
}

func writeModels(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "models.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const modelsFile = `
models:
  - name: fast
    deployments:
      - {id: fast-east, provider: openai, model: gpt-4o-mini, api_key_env: CHATFLEET_TEST_EAST_KEY, rpm: 500}
      - {provider: openai, model: llama3.1, base_url: "http://vllm:8000/v1"}
    fallbacks: [smart]
    price: {input: 0.15, output: 0.6}
  - name: smart
    deployments:
      - {provider: anthropic, model: claude-haiku-4-5, api_key_env: ANTHROPIC_API_KEY}
`

func TestModelsFile(t *testing.T) {
	vars := map[string]string{
		"CHATFLEET_REDIS_URL":     "redis://x:6379",
		"CHATFLEET_MODELS_FILE":   writeModels(t, modelsFile),
		"CHATFLEET_TEST_EAST_KEY": "sk-east",
		"ANTHROPIC_API_KEY":       "sk-ant",
		// Not used with the file: its missing model is no error.
		"CHATFLEET_LLM_PROVIDER": "openai",
		// Prices in the file allow a dollar budget.
		"CHATFLEET_TENANT_BUDGETS": "acme:usd=50/month",
	}
	c, err := Load(RoleWorker, env(vars))
	if err != nil {
		t.Fatal(err)
	}
	if c.ModelSet == nil || c.ModelSet.Default != "fast" || c.ModelSet.Models[0].Deployments[0].APIKey != "sk-east" ||
		c.ModelSet.Models[1].Deployments[0].ID != "smart-1" {
		t.Fatalf("model set %+v", c.ModelSet)
	}
	sum := c.Summary(RoleWorker, env(vars))
	if !strings.Contains(sum, "fast-east (openai gpt-4o-mini, rpm 500") || strings.Contains(sum, "sk-east") {
		t.Fatalf("summary: %s", sum)
	}

	// Production takes the file instead of CHATFLEET_MODELS and the LLM variables.
	prod := map[string]string{"CHATFLEET_ENV": "production", "CHATFLEET_API_KEYS": "acme:0123456789abcdef"}
	for k, v := range vars {
		prod[k] = v
	}
	if _, err := Load(RoleWorker, env(prod)); err != nil {
		t.Fatalf("production with a models file: %v", err)
	}
	prod["CHATFLEET_MODELS_FILE"] = writeModels(t, "models:\n  - name: a\n    deployments: [{id: a-sim, provider: sim}]\n")
	if _, err := Load(RoleWorker, env(prod)); err == nil ||
		!strings.Contains(err.Error(), `CHATFLEET_MODELS_FILE: models[0] "a": deployments[0] "a-sim": production refuses the simulated LLM`) {
		t.Fatalf("production with a sim deployment: %v", err)
	}

	vars["CHATFLEET_MODELS"] = "fast"
	if _, err := Load(RoleWorker, env(vars)); err == nil || !strings.Contains(err.Error(), "CHATFLEET_MODELS: the models file lists the models; unset CHATFLEET_MODELS") {
		t.Fatalf("CHATFLEET_MODELS with the file: %v", err)
	}
	delete(vars, "CHATFLEET_MODELS")

	// Every problem of the file, each on its own line with the variable's name.
	vars["CHATFLEET_MODELS_FILE"] = writeModels(t, "models:\n  - name: a\n    deployments: [{provider: openai, rpm: -1, api_key_env: NOPE_KEY}]\n    fallbacks: [b]\n")
	_, err = Load(RoleWorker, env(vars))
	if err == nil {
		t.Fatal("a broken file was accepted")
	}
	for _, want := range []string{
		`CHATFLEET_MODELS_FILE: models[0] "a": deployments[0].rpm: must not be negative`,
		`CHATFLEET_MODELS_FILE: models[0] "a": deployments[0].api_key_env: variable NOPE_KEY is not set`,
		`CHATFLEET_MODELS_FILE: models[0] "a": fallbacks[0]: "b" is not a model of this file`,
	} {
		if !strings.Contains("\n"+err.Error(), "\n"+want) {
			t.Errorf("missing line %q in:\n%v", want, err)
		}
	}
	vars["CHATFLEET_MODELS_FILE"] = "/nonexistent/models.yaml"
	if _, err := Load(RoleWorker, env(vars)); err == nil || !strings.Contains(err.Error(), "CHATFLEET_MODELS_FILE: open /nonexistent/models.yaml") {
		t.Fatalf("a missing file: %v", err)
	}
}

func TestCheckNamesTheModelsFileProblems(t *testing.T) {
	path := writeModels(t, modelsFile)
	environ := []string{"CHATFLEET_REDIS_URL=redis://x:6379", "CHATFLEET_MODELS_FILE=" + path,
		"CHATFLEET_TEST_EAST_KEY=sk-east", "ANTHROPIC_API_KEY=sk-ant"}
	var out, errOut strings.Builder
	if code := Check(RoleWorker, environ, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	// The file's key variables are known, not warned about.
	if strings.Contains(errOut.String(), "CHATFLEET_TEST_EAST_KEY") || !strings.Contains(out.String(), "config ok") {
		t.Fatalf("stdout %s\nstderr %s", out.String(), errOut.String())
	}
	out.Reset()
	errOut.Reset()
	environ[1] = "CHATFLEET_MODELS_FILE=" + writeModels(t, "models:\n  - name: a\n    deployments: [{provider: gemini, weight: 0}]\n")
	if code := Check(RoleWorker, environ, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), `CHATFLEET_MODELS_FILE: models[0] "a": deployments[0].provider: must be openai, anthropic or sim, got "gemini"`) ||
		!strings.Contains(errOut.String(), `CHATFLEET_MODELS_FILE: models[0] "a": deployments[0].weight: must be a number more than 0`) {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
}

func TestTenantWeights(t *testing.T) {
	c, err := Load(RoleStandalone, env(map[string]string{"CHATFLEET_TENANT_WEIGHTS": "acme:3, beta:0.5"}))
	if err != nil || c.TenantWeights["acme"] != 3 || c.TenantWeights["beta"] != 0.5 || len(c.TenantWeights) != 2 {
		t.Fatalf("weights: %v %v", c.TenantWeights, err)
	}
	for _, bad := range []string{"acme", "acme:x", "acme:-1", ":2", "acme:1,acme:2", "acme:1001"} {
		if _, err := Load(RoleStandalone, env(map[string]string{"CHATFLEET_TENANT_WEIGHTS": bad})); err == nil ||
			!strings.Contains(err.Error(), "CHATFLEET_TENANT_WEIGHTS") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
