// Package deploy checks the deployment files: alert rules with promtool, the
// compose file with the Compose specification's loader, the Kubernetes manifests, and every
// Grafana panel query against a real Prometheus scraping a real api and worker.
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/chatfleet/chatfleet/internal/testkit"
	"github.com/chatfleet/chatfleet/models"
	"github.com/compose-spec/compose-go/v2/cli"
)

// need fails the test, with the install command, when a tool is missing.
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is not installed: apt-get install -y %s (.ci/run installs it)", tool, pkg)
	}
	return p
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestAlertRules(t *testing.T) {
	need(t, "promtool", "prometheus")
	out := run(t, "prometheus", "promtool", "check", "rules", "alerts.yml")
	if !strings.Contains(out, "SUCCESS: 9 rules found") {
		t.Fatalf("promtool check rules: %s", out)
	}
	run(t, "prometheus", "promtool", "test", "rules", "alerts_test.yml")
	run(t, "prometheus", "promtool", "check", "config", "prometheus.yml")
}

// The provider label holds a deployment's id: every panel and alert that
// shows it says so, in its title and legend, its summary and description.
func TestDeploymentsAreNamed(t *testing.T) {
	files, err := filepath.Glob("grafana/dashboards/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("dashboards: %v %v", files, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Panels []struct {
				Title   string `json:"title"`
				Targets []struct {
					Expr   string `json:"expr"`
					Legend string `json:"legendFormat"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		shown := 0
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				if !strings.Contains(tg.Legend, "{{provider}}") {
					continue
				}
				shown++
				if !strings.Contains(tg.Legend, "deployment {{provider}}") || !strings.Contains(strings.ToLower(p.Title), "deployment") {
					t.Errorf("%s: panel %q, legend %q: say deployment", f, p.Title, tg.Legend)
				}
			}
		}
		if shown == 0 {
			t.Errorf("%s: no panel shows the provider label", f)
		}
	}
	raw, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatal(err)
	}
	named := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if !strings.Contains(r.Expr, "by (provider)") {
				continue
			}
			named++
			for _, k := range []string{"summary", "description"} {
				if !strings.Contains(strings.ToLower(r.Annotations[k]), "deployment {{ $labels.provider }}") {
					t.Errorf("alert %s: %s %q does not name the deployment", r.Alert, k, r.Annotations[k])
				}
			}
		}
	}
	if named != 3 {
		t.Errorf("%d alerts by provider, want 3 (breaker open, at limit, limiter failing open)", named)
	}
}

// TestComposeFile loads the compose file with the Compose specification's
// own loader (schema validation, interpolation from the example env file,
// consistency checks), as `docker compose config` does.
func TestComposeFile(t *testing.T) {
	opts, err := cli.NewProjectOptions([]string{"docker-compose.production.yml"},
		cli.WithWorkingDirectory(".."), cli.WithEnvFiles(filepath.Join("..", ".env.production.example")),
		cli.WithDotEnv, cli.WithName("chatfleet"), cli.WithConsistency(true))
	if err != nil {
		t.Fatal(err)
	}
	// Paths are relative to the repository root, as for `docker compose -f`.
	opts.ConfigPaths = []string{filepath.Join("..", "docker-compose.production.yml")}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("the compose file does not load: %v", err)
	}
	for _, name := range []string{"redis", "api", "worker", "prometheus", "alertmanager", "grafana", "jaeger"} {
		if _, err := project.GetService(name); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
	}
	redis, _ := project.GetService("redis")
	if !slices.Contains(redis.Command, "--appendonly") {
		t.Errorf("redis runs without AOF persistence: %v", redis.Command)
	}
	api, _ := project.GetService("api")
	if api.Deploy == nil || api.Deploy.Replicas == nil || *api.Deploy.Replicas != 2 {
		t.Errorf("api should run 2 replicas: %+v", api.Deploy)
	}
}

// TestComposeClusterOverride loads the production compose file with the
// Redis Cluster override: six nodes, the one-shot init, and api and worker
// on a redis-cluster:// URL that starts after it.
func TestComposeClusterOverride(t *testing.T) {
	files := []string{filepath.Join("..", "docker-compose.production.yml"), filepath.Join("..", "docker-compose.cluster.yml")}
	opts, err := cli.NewProjectOptions(files, cli.WithWorkingDirectory(".."), cli.WithEnvFiles(filepath.Join("..", ".env.production.example")),
		cli.WithDotEnv, cli.WithName("chatfleet"), cli.WithConsistency(true))
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("the compose files do not load: %v", err)
	}
	for i := 1; i <= 6; i++ {
		n, err := project.GetService(fmt.Sprint("redis-", i))
		if err != nil || !slices.Contains(n.Command, "--cluster-enabled") || !slices.Contains(n.Command, "--appendonly") {
			t.Errorf("redis-%d: %v %v", i, n.Command, err)
		}
	}
	for _, name := range []string{"api", "worker"} {
		s, _ := project.GetService(name)
		if u := s.Environment["CHATFLEET_REDIS_URL"]; u == nil || !strings.HasPrefix(*u, "redis-cluster://") {
			t.Errorf("%s: CHATFLEET_REDIS_URL %v", name, u)
		}
		if d, ok := s.DependsOn["redis-cluster-init"]; !ok || d.Condition != "service_completed_successfully" {
			t.Errorf("%s does not wait for the cluster: %+v", name, s.DependsOn)
		}
	}
}

type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Template struct {
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				Containers                    []struct {
					Name           string `yaml:"name"`
					LivenessProbe  *probe `yaml:"livenessProbe"`
					ReadinessProbe *probe `yaml:"readinessProbe"`
					VolumeMounts   []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
						SubPath   string `yaml:"subPath"`
						ReadOnly  bool   `yaml:"readOnly"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []volume `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
		ScaleTargetRef struct {
			Name string `yaml:"name"`
		} `yaml:"scaleTargetRef"`
		Triggers []struct {
			Metadata map[string]string `yaml:"metadata"`
		} `yaml:"triggers"`
	} `yaml:"spec"`
}

type volume struct {
	Name      string       `yaml:"name"`
	ConfigMap configMapRef `yaml:"configMap"`
}

type configMapRef struct {
	Name string `yaml:"name"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
	} `yaml:"httpGet"`
}

// The manifests parse, every container probes live and ready, workers get
// more grace than their drain timeout, and autoscaling follows the backlog.
func TestKubernetesManifests(t *testing.T) {
	var objs []k8sObject
	files, _ := filepath.Glob("k8s/*.yaml")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		for {
			var o k8sObject
			err := dec.Decode(&o)
			if err != nil {
				if err.Error() == "EOF" {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			objs = append(objs, o)
		}
	}
	var drain time.Duration
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.Kind]++
		if o.Kind == "ConfigMap" && o.Metadata.Name == "chatfleet-config" {
			drain, _ = time.ParseDuration(o.Data["CHATFLEET_SHUTDOWN_TIMEOUT"])
			if o.Data["CHATFLEET_MODELS_FILE"] != "/etc/chatfleet/models.yaml" || o.Data["CHATFLEET_MODELS"] != "" {
				t.Errorf("the ConfigMap must name the mounted models file and no CHATFLEET_MODELS: %v", o.Data)
			}
		}
		if o.Kind == "ConfigMap" && o.Metadata.Name == "chatfleet-models" {
			checkModelsFile(t, "k8s/models-configmap.yaml", []byte(o.Data["models.yaml"]))
		}
	}
	if drain == 0 {
		t.Fatal("the ConfigMap sets no CHATFLEET_SHUTDOWN_TIMEOUT")
	}
	for _, o := range objs {
		switch o.Kind {
		case "Deployment":
			for _, c := range o.Spec.Template.Spec.Containers {
				if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/health/live" || c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/health/ready" {
					t.Errorf("%s/%s: probes must be /health/live and /health/ready", o.Metadata.Name, c.Name)
				}
			}
			// The models file: the ConfigMap's directory, read-only, without
			// subPath (a subPath mount never sees the ConfigMap's edits).
			mounted := false
			for _, c := range o.Spec.Template.Spec.Containers {
				for _, m := range c.VolumeMounts {
					mounted = mounted || (m.MountPath == "/etc/chatfleet" && m.ReadOnly && m.SubPath == "" &&
						slices.Contains(o.Spec.Template.Spec.Volumes, volume{Name: m.Name, ConfigMap: configMapRef{Name: "chatfleet-models"}}))
				}
			}
			if !mounted {
				t.Errorf("%s does not mount the chatfleet-models ConfigMap read-only at /etc/chatfleet", o.Metadata.Name)
			}
			if o.Metadata.Name == "chatfleet-worker" && time.Duration(o.Spec.Template.Spec.TerminationGracePeriodSeconds)*time.Second <= drain {
				t.Errorf("worker grace period %ds is not above the drain timeout %s", o.Spec.Template.Spec.TerminationGracePeriodSeconds, drain)
			}
		case "ScaledObject":
			if o.Spec.ScaleTargetRef.Name != "chatfleet-worker" || len(o.Spec.Triggers) == 0 || !strings.Contains(o.Spec.Triggers[0].Metadata["query"], "chatfleet_queue_runnable") {
				t.Errorf("autoscaling must scale chatfleet-worker on chatfleet_queue_runnable: %+v", o.Spec)
			}
		}
	}
	if kinds["ConfigMap"] != 2 {
		t.Errorf("deploy/k8s should hold chatfleet-config and chatfleet-models, has %d ConfigMaps", kinds["ConfigMap"])
	}
	for _, k := range []string{"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "ConfigMap"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in deploy/k8s", k)
		}
	}
}

// The example models file is valid, and the Kubernetes ConfigMap is a copy of it.
func TestModelsExample(t *testing.T) {
	example, err := os.ReadFile("models.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	set := checkModelsFile(t, "models.example.yaml", example)
	if set != nil && (len(set.Models) != 3 || len(set.Models[0].Deployments) != 2) {
		t.Errorf("the example: %+v", set)
	}
	raw, err := os.ReadFile("k8s/models-configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm k8sObject
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data["models.yaml"] != string(example) {
		t.Error("k8s/models-configmap.yaml holds another list than models.example.yaml")
	}
}

func checkModelsFile(t *testing.T, name string, data []byte) *models.Set {
	t.Helper()
	// Every key variable set: the check is of the file, not of this machine.
	set, err := models.Parse(data, func(string) string { return "key" })
	if err != nil {
		t.Errorf("%s: %v", name, err)
	}
	return set
}

type dashboard struct {
	Panels []struct {
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// A real Prometheus scrapes a running api and worker while jobs flow; every
// panel query of every dashboard must be valid and return data.
func TestDashboardQueriesReturnData(t *testing.T) {
	prom := need(t, "prometheus", "prometheus")
	dir := t.TempDir()
	apiBin, workerBin, err := testkit.BuildBinaries(dir)
	if err != nil {
		t.Fatal(err)
	}
	rd := testkit.StartRedis(t)
	env := testkit.Env(map[string]string{"CHATFLEET_REDIS_URL": rd.URL(), "CHATFLEET_HTTP_ADDR": "127.0.0.1:0", "CHATFLEET_SIM_TOKENS": "8"})
	api := testkit.StartProc(t, "api", apiBin, env)
	worker := testkit.StartProc(t, "worker", workerBin, env)

	rules, _ := filepath.Abs("prometheus/alerts.yml")
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: chatfleet-api
    static_configs: [{targets: [%q]}]
  - job_name: chatfleet-worker
    static_configs: [{targets: [%q]}]
`, rules, api.Addr, worker.Addr)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t))
	cmd := exec.Command(prom, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	var promLog bytes.Buffer
	cmd.Stdout, cmd.Stderr = &promLog, &promLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	// Traffic: jobs, a client error, a stream, a queue status read.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for i := 0; ctx.Err() == nil; i++ {
			body := fmt.Sprintf(`{"session_id":"dash-%d","message":"hello %d"}`, i%5, i)
			if res, err := http.Post(api.URL()+"/api/v1/chat/jobs", "application/json", strings.NewReader(body)); err == nil {
				res.Body.Close()
			}
			if res, err := http.Post(api.URL()+"/api/v1/chat/jobs", "text/plain", strings.NewReader("x")); err == nil {
				res.Body.Close()
			}
			if res, err := http.Get(api.URL() + "/health/queue/status"); err == nil {
				res.Body.Close()
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	query := func(expr string) (int, error) {
		res, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(expr))
		if err != nil {
			return 0, err
		}
		defer res.Body.Close()
		var out struct {
			Status string `json:"status"`
			Error  string `json:"error"`
			Data   struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
			return 0, err
		}
		if out.Status != "success" {
			return 0, fmt.Errorf("query failed: %s", out.Error)
		}
		return len(out.Data.Result), nil
	}
	// Both targets up, and enough scrapes for the rate() windows.
	deadline := time.Now().Add(60 * time.Second)
	for {
		up, err := query(`count(up == 1) == 2`)
		scrapes, err2 := query(`count_over_time(up{job="chatfleet-worker"}[1m]) > 5`)
		if err == nil && err2 == nil && up > 0 && scrapes > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus never scraped both targets: %v\n%s", err, promLog.String())
		}
		time.Sleep(500 * time.Millisecond)
	}

	files, _ := filepath.Glob("grafana/dashboards/*.json")
	if len(files) == 0 {
		t.Fatal("no dashboards")
	}
	checked := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range d.Panels {
			if p.Datasource.UID != "prometheus" {
				t.Errorf("%s: panel %q uses datasource %q, provisioned is \"prometheus\"", f, p.Title, p.Datasource.UID)
			}
			for _, tg := range p.Targets {
				n, err := query(tg.Expr)
				if err != nil || n == 0 {
					t.Errorf("%s: panel %q: %q returned %d series (%v)", filepath.Base(f), p.Title, tg.Expr, n, err)
				}
				checked++
			}
		}
	}
	t.Logf("%d panel queries returned data", checked)
}
