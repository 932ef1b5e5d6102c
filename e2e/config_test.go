package e2e

import (
	"bytes"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/chatfleet/chatfleet/internal/testkit"
)

func runCheck(t *testing.T, bin string, vars map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = testkit.Env(vars)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func TestConfigCheck(t *testing.T) {
	t.Run("worker names a malformed variable", func(t *testing.T) {
		code, _, stderr := runCheck(t, workerBin, map[string]string{
			"CHATFLEET_REDIS_URL": "redis://127.0.0.1:1", "CHATFLEET_WORKER_CONCURRENCY": "abc",
		}, "config", "check")
		if code == 0 || !strings.Contains(stderr, "CHATFLEET_WORKER_CONCURRENCY") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("every problem at once", func(t *testing.T) {
		code, _, stderr := runCheck(t, apiBin, map[string]string{
			"CHATFLEET_REDIS_URL": "http://x", "CHATFLEET_JOB_RETENTION": "forever", "CHATFLEET_SIM_FAIL_RATE": "2",
		}, "config", "check")
		for _, v := range []string{"CHATFLEET_REDIS_URL", "CHATFLEET_JOB_RETENTION", "CHATFLEET_SIM_FAIL_RATE"} {
			if !strings.Contains(stderr, v) {
				t.Errorf("stderr does not name %s: %q", v, stderr)
			}
		}
		if code == 0 {
			t.Fatal("exit 0 on a bad configuration")
		}
	})
	t.Run("production refuses embedded redis and the simulated llm", func(t *testing.T) {
		code, _, stderr := runCheck(t, apiBin, map[string]string{"CHATFLEET_ENV": "production"}, "--standalone", "config", "check")
		if code == 0 || !strings.Contains(stderr, "CHATFLEET_REDIS_URL") || !strings.Contains(stderr, "CHATFLEET_LLM_PROVIDER") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("a good configuration passes and hides secrets", func(t *testing.T) {
		code, stdout, stderr := runCheck(t, workerBin, map[string]string{
			"CHATFLEET_REDIS_URL": "redis://:hunter2-secret@127.0.0.1:6390/0",
		}, "config", "check")
		if code != 0 || !strings.Contains(stdout, "config ok") {
			t.Fatalf("exit %d, stdout %q stderr %q", code, stdout, stderr)
		}
		if strings.Contains(stdout+stderr, "hunter2") {
			t.Fatal("config check printed a secret")
		}
	})
	t.Run("a misspelt variable is named", func(t *testing.T) {
		code, _, stderr := runCheck(t, apiBin, map[string]string{
			"CHATFLEET_REDIS_URL": "redis://127.0.0.1:1", "CHATFLEET_WORKER_CONCURENCY": "5",
		}, "config", "check")
		if code != 0 || !strings.Contains(stderr, "CHATFLEET_WORKER_CONCURENCY: unknown variable") ||
			!strings.Contains(stderr, "did you mean CHATFLEET_WORKER_CONCURRENCY?") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("the process refuses to start on a bad configuration", func(t *testing.T) {
		code, _, stderr := runCheck(t, workerBin, map[string]string{"CHATFLEET_WORKER_CONCURRENCY": "0"})
		if code == 0 || !strings.Contains(stderr, "CHATFLEET_WORKER_CONCURRENCY") || !strings.Contains(stderr, "CHATFLEET_REDIS_URL") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
	})
}
