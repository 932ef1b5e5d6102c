package config

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/chatfleet/chatfleet/models"
)

// Summary renders the effective settings with secrets redacted, for `config check`.
func (c Config) Summary(role Role, getenv func(string) string) string {
	var b strings.Builder
	for _, v := range Vars(role) {
		raw := strings.TrimSpace(getenv(v.Name))
		src := "env"
		if raw == "" {
			raw, src = v.Default, "default"
		}
		if v.Secret && raw != "" {
			raw = "(set, redacted)"
		}
		fmt.Fprintf(&b, "%s=%s (%s)\n", v.Name, raw, src)
	}
	if c.ModelSet != nil {
		fmt.Fprintf(&b, "models file: default model %s\n", c.ModelSet.Default)
		for _, m := range c.ModelSet.Models {
			var deps []string
			for _, d := range m.Deployments {
				deps = append(deps, fmt.Sprintf("%s (%s %s, rpm %d, tpm %d, concurrency %d, weight %g)", d.ID, d.Provider, d.Model, d.RPM, d.TPM, d.Concurrency, d.Weight))
			}
			fmt.Fprintf(&b, "  %s: %s", m.Name, strings.Join(deps, ", "))
			if len(m.Fallbacks) > 0 {
				fmt.Fprintf(&b, "; fallbacks %s", strings.Join(m.Fallbacks, ", "))
			}
			if m.Price != nil {
				fmt.Fprintf(&b, "; price input %g, output %g", m.Price.Input, m.Price.Output)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// Getenv looks variables up in environ ("NAME=value" entries, as os.Environ).
func Getenv(environ []string) func(string) string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(k string) string { return m[k] }
}

// Unknown returns a warning for every CHATFLEET_ variable in environ that
// chatfleet does not read (a misspelling is otherwise silently ignored), with
// the nearest known name when one is close.
func Unknown(environ []string) []string {
	known := map[string]bool{}
	var names []string
	for _, v := range Vars(RoleAPI) {
		known[v.Name] = true
		names = append(names, v.Name)
	}
	getenv := Getenv(environ)
	// Key variables named by the fallback list are read too.
	for _, entry := range strings.Split(getenv("CHATFLEET_LLM_FALLBACKS"), ",") {
		entry, _, _ = strings.Cut(entry, ";")
		if _, keyVar, ok := strings.Cut(entry, "#"); ok {
			known[strings.TrimSpace(keyVar)] = true
		}
	}
	// So are the key variables of the models file.
	if path := getenv("CHATFLEET_MODELS_FILE"); path != "" {
		if set, err := models.Load(path, getenv); err == nil {
			for _, m := range set.Models {
				for _, d := range m.Deployments {
					known[d.APIKeyEnv] = true
				}
			}
		}
	}
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "CHATFLEET_") || known[k] {
			continue
		}
		w := k + ": unknown variable, ignored"
		if near := nearest(k, names); near != "" {
			w += "; did you mean " + near + "?"
		}
		out = append(out, w)
	}
	sort.Strings(out)
	return out
}

// nearest returns the name within a small edit distance of k, if any.
func nearest(k string, names []string) string {
	best, bestD := "", 4
	for _, n := range names {
		if d := editDistance(k, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Check is the `config check` command: it validates without starting, prints
// the effective settings (secrets redacted) or every problem, names unknown
// CHATFLEET_ variables, and returns the process exit code.
func Check(role Role, environ []string, stdout, stderr io.Writer) int {
	getenv := Getenv(environ)
	for _, w := range Unknown(environ) {
		fmt.Fprintln(stderr, "warning: "+w)
	}
	c, err := Load(role, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "config check failed:\n%s\n", err)
		return 1
	}
	fmt.Fprint(stdout, c.Summary(role, getenv))
	fmt.Fprintln(stdout, "config ok")
	return 0
}
