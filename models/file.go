package models

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads and validates the models file at path (see Parse).
func Load(path string, getenv func(string) string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, getenv)
}

// Parse reads a models file (YAML; JSON is YAML too) and validates it, reading
// the key variables it names through getenv. The error names every problem
// at once (errors.Join), each with its entry and field, e.g.
//
//	models[1] "beta": deployments[0].rpm: must not be negative
func Parse(data []byte, getenv func(string) string) (*Set, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, err
	}
	if len(root.Content) == 0 || isNull(root.Content[0]) {
		return nil, errors.New("the file is empty: it must list the models")
	}
	p := parser{getenv: getenv, ids: map[string]string{}}
	set := p.file(resolve(root.Content[0]))
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return set, nil
}

// safeName: names become metric label values and Redis key parts.
var safeName = regexp.MustCompile(`^[A-Za-z0-9._:/-]{1,64}$`)

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

type parser struct {
	getenv func(string) string
	errs   []error
	ids    map[string]string // deployment id -> the entry that has it
}

// fail records a problem of field (a path such as `models[1] "beta": deployments[0].rpm`).
func (p *parser) fail(field, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

func (p *parser) file(doc *yaml.Node) *Set {
	set := &Set{}
	var modelNodes []*yaml.Node
	p.fields(doc, "", "the file", map[string]func(*yaml.Node){
		"default_model": func(v *yaml.Node) { p.str(v, "default_model", &set.Default) },
		"models": func(v *yaml.Node) {
			if isNull(v) {
				return
			}
			if v.Kind != yaml.SequenceNode {
				p.fail("models", "must be a list (line %d)", v.Line)
				return
			}
			modelNodes = v.Content
		},
	})
	if doc.Kind != yaml.MappingNode {
		return nil
	}
	if len(modelNodes) == 0 {
		p.fail("models", "lists no model")
		return nil
	}
	index := map[string]int{} // public name -> its first entry
	entries := make([]string, len(modelNodes))
	for i, n := range modelNodes {
		m, entry := p.model(resolve(n), i)
		entries[i] = entry
		if m.Name != "" {
			if first, dup := index[m.Name]; dup {
				p.fail(entry+": name", "%q is listed twice (first as models[%d])", m.Name, first)
			} else {
				index[m.Name] = i
			}
		}
		set.Models = append(set.Models, m)
	}
	for i, m := range set.Models {
		for j, fb := range m.Fallbacks {
			if _, ok := index[fb]; !ok {
				p.fail(fmt.Sprintf("%s: fallbacks[%d]", entries[i], j), "%q is not a model of this file", fb)
			} else if slices.Index(m.Fallbacks, fb) < j {
				p.fail(fmt.Sprintf("%s: fallbacks[%d]", entries[i], j), "%q is listed twice", fb)
			}
		}
	}
	p.cycles(set.Models, index, entries)
	if set.Default == "" {
		set.Default = set.Models[0].Name
	} else if _, ok := index[set.Default]; !ok {
		p.fail("default_model", "%q is not a model of this file", set.Default)
	}
	return set
}

func (p *parser) model(n *yaml.Node, i int) (Model, string) {
	var m Model
	entry := fmt.Sprintf("models[%d]", i)
	if n.Kind == yaml.MappingNode {
		// The entry is named by its name wherever that stands in the mapping.
		for k := 0; k+1 < len(n.Content); k += 2 {
			if v := resolve(n.Content[k+1]); n.Content[k].Value == "name" && v.Kind == yaml.ScalarNode && !isNull(v) {
				entry += fmt.Sprintf(" %q", v.Value)
			}
		}
	}
	var deps []*yaml.Node
	p.fields(n, entry+": ", entry, map[string]func(*yaml.Node){
		"name": func(v *yaml.Node) { p.str(v, entry+": name", &m.Name) },
		"deployments": func(v *yaml.Node) {
			if isNull(v) {
				return
			}
			if v.Kind != yaml.SequenceNode {
				p.fail(entry+": deployments", "must be a list (line %d)", v.Line)
				return
			}
			deps = v.Content
		},
		"fallbacks": func(v *yaml.Node) {
			if isNull(v) {
				return
			}
			if err := v.Decode(&m.Fallbacks); err != nil {
				p.fail(entry+": fallbacks", "must be a list of model names (line %d)", v.Line)
			}
		},
		"price": func(v *yaml.Node) { m.Price = p.price(v, entry+": price") },
	})
	if n.Kind != yaml.MappingNode {
		return m, entry
	}
	switch {
	case m.Name == "":
		p.fail(entry+": name", "required")
	case !safeName.MatchString(m.Name):
		p.fail(entry+": name", "%q must be 1 to 64 letters, digits and . _ - : /", m.Name)
	}
	if len(deps) == 0 {
		p.fail(entry+": deployments", "required: at least one")
	}
	for j, dn := range deps {
		m.Deployments = append(m.Deployments, p.deployment(resolve(dn), fmt.Sprintf("%s: deployments[%d]", entry, j), m.Name, j))
	}
	return m, entry
}

func (p *parser) deployment(n *yaml.Node, where, model string, j int) Deployment {
	var d Deployment
	var weight *float64
	p.fields(n, where+".", where, map[string]func(*yaml.Node){
		"id":          func(v *yaml.Node) { p.str(v, where+".id", &d.ID) },
		"provider":    func(v *yaml.Node) { p.str(v, where+".provider", &d.Provider) },
		"model":       func(v *yaml.Node) { p.str(v, where+".model", &d.Model) },
		"base_url":    func(v *yaml.Node) { p.str(v, where+".base_url", &d.BaseURL) },
		"api_key_env": func(v *yaml.Node) { p.str(v, where+".api_key_env", &d.APIKeyEnv) },
		"rpm":         func(v *yaml.Node) { p.count(v, where+".rpm", &d.RPM) },
		"tpm":         func(v *yaml.Node) { p.count(v, where+".tpm", &d.TPM) },
		"concurrency": func(v *yaml.Node) { p.count(v, where+".concurrency", &d.Concurrency) },
		"weight": func(v *yaml.Node) {
			var w float64
			if p.number(v, where+".weight", &w) {
				weight = &w
			}
		},
	})
	if n.Kind != yaml.MappingNode {
		return d
	}
	// 1-based, as the deployments are counted in prose: alpha-1 is the first.
	if d.ID == "" && model != "" {
		d.ID = fmt.Sprintf("%s-%d", model, j+1)
	}
	if d.ID != "" {
		if !safeName.MatchString(d.ID) {
			p.fail(where+".id", "%q must be 1 to 64 letters, digits and . _ - : /", d.ID)
		} else if first, dup := p.ids[d.ID]; dup {
			p.fail(where+".id", "%q is already the id of %s (ids are unique in the whole file)", d.ID, first)
		} else {
			p.ids[d.ID] = where
		}
	}
	switch d.Provider {
	case "openai", "anthropic", "sim":
	case "":
		p.fail(where+".provider", "required: openai, anthropic or sim")
	default:
		p.fail(where+".provider", "must be openai, anthropic or sim, got %q", d.Provider)
	}
	if d.Model == "" {
		d.Model = model
	}
	if d.BaseURL != "" {
		if u, err := url.Parse(d.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.fail(where+".base_url", "must be an http:// or https:// URL")
		}
	}
	// A sim deployment needs no key; a key-less openai deployment is a local
	// server (vLLM, Ollama), so only a named but unset variable is refused.
	if d.APIKeyEnv != "" && d.Provider != "sim" {
		if !envName.MatchString(d.APIKeyEnv) {
			// Not quoted: it may be the key itself, pasted by mistake.
			p.fail(where+".api_key_env", "must name the environment variable that holds the key, never the key itself")
		} else if d.APIKey = strings.TrimSpace(p.getenv(d.APIKeyEnv)); d.APIKey == "" {
			p.fail(where+".api_key_env", "variable %s is not set", d.APIKeyEnv)
		}
	}
	switch {
	case weight != nil && (!(*weight > 0) || math.IsInf(*weight, 1)): // NaN is not > 0
		p.fail(where+".weight", "must be a number more than 0")
	case weight != nil:
		d.Weight = *weight
	case d.RPM > 0:
		d.Weight = float64(d.RPM)
	case d.TPM > 0:
		d.Weight = float64(d.TPM)
	default:
		d.Weight = 1
	}
	return d
}

func (p *parser) price(v *yaml.Node, where string) *Price {
	if isNull(v) {
		return nil
	}
	var pr Price
	p.fields(v, where+".", where, map[string]func(*yaml.Node){
		"input":  func(v *yaml.Node) { p.price1(v, where+".input", &pr.Input) },
		"output": func(v *yaml.Node) { p.price1(v, where+".output", &pr.Output) },
	})
	return &pr
}

func (p *parser) price1(v *yaml.Node, field string, out *float64) {
	if p.number(v, field, out) && *out < 0 {
		p.fail(field, "must not be negative")
	}
}

// cycles refuses fallback chains that come back to where they started.
func (p *parser) cycles(ms []Model, index map[string]int, entries []string) {
	state := make([]int, len(ms)) // 0 unseen, 1 on the path, 2 done
	var path []int
	var visit func(i int)
	visit = func(i int) {
		state[i] = 1
		path = append(path, i)
		for _, fb := range ms[i].Fallbacks {
			j, ok := index[fb]
			if !ok {
				continue
			}
			switch state[j] {
			case 0:
				visit(j)
			case 1:
				start := slices.Index(path, j)
				names := make([]string, 0, len(path)-start+1)
				for _, k := range path[start:] {
					names = append(names, ms[k].Name)
				}
				names = append(names, ms[j].Name)
				p.fail(entries[j]+": fallbacks", "form a cycle %s", strings.Join(names, " → "))
			}
		}
		path = path[:len(path)-1]
		state[i] = 2
	}
	for i := range ms {
		// A repeated name is refused already; its first entry stands for it.
		if first, ok := index[ms[i].Name]; ok && first == i && state[i] == 0 {
			visit(i)
		}
	}
}

// fields reads a mapping: each key through its reader; any other key, or a
// key given twice, is refused. prefix+key names the field.
func (p *parser) fields(n *yaml.Node, prefix, entry string, readers map[string]func(*yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		p.fail(entry, "must be a mapping (line %d)", n.Line)
		return
	}
	known := make([]string, 0, len(readers))
	for k := range readers {
		known = append(known, k)
	}
	slices.Sort(known)
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolve(n.Content[i+1])
		read, ok := readers[k.Value]
		switch {
		case !ok:
			p.fail(prefix+k.Value, "unknown field (line %d; known: %s)", k.Line, strings.Join(known, ", "))
		case seen[k.Value]:
			p.fail(prefix+k.Value, "given twice (line %d)", k.Line)
		default:
			seen[k.Value] = true
			read(v)
		}
	}
}

func (p *parser) str(v *yaml.Node, field string, out *string) {
	if isNull(v) {
		return
	}
	if v.Kind != yaml.ScalarNode {
		p.fail(field, "must be a string (line %d)", v.Line)
		return
	}
	*out = strings.TrimSpace(v.Value)
}

// count reads a quota: a whole number, 0 meaning no limit.
func (p *parser) count(v *yaml.Node, field string, out *int) {
	if isNull(v) {
		return
	}
	if v.Kind != yaml.ScalarNode || v.Decode(out) != nil {
		p.fail(field, "must be a whole number (line %d)", v.Line)
		return
	}
	if *out < 0 {
		p.fail(field, "must not be negative (0: no limit)")
	}
}

func (p *parser) number(v *yaml.Node, field string, out *float64) bool {
	if isNull(v) {
		return false
	}
	if v.Kind != yaml.ScalarNode || v.Decode(out) != nil {
		p.fail(field, "must be a number (line %d)", v.Line)
		return false
	}
	return true
}

func isNull(n *yaml.Node) bool {
	n = resolve(n)
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// resolve follows a YAML alias (*name) to its anchor's node.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}
