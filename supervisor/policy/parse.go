package policy

import (
	"bytes"
	"fmt"
	"math"
	"strconv"

	"gopkg.in/yaml.v3"
)

// MaxFileSize bounds a policy document; real ones are a few KiB.
const MaxFileSize = 1 << 20

// Parse reads a YAML policy. Unknown fields, wrong types and invalid values are all
// reported at once in a *ValidationError whose entries name the field path and line.
func Parse(data []byte) (*Policy, error) {
	if len(data) > MaxFileSize {
		return nil, &ValidationError{Errors: []*FieldError{{Path: "(document)", Msg: fmt.Sprintf("policy is %d bytes; the limit is %d", len(data), MaxFileSize)}}}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, &ValidationError{Errors: []*FieldError{{Path: "(document)", Msg: "not valid YAML: " + err.Error()}}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &ValidationError{Errors: []*FieldError{{Path: "(document)", Line: extra.Line, Msg: "more than one YAML document: a policy file holds exactly one"}}}
	}
	d := &decoder{lines: map[string]int{}}
	p := &Policy{NetworkPolicies: map[string]*NetworkRule{}}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	d.policy(root, p)
	if len(d.errs) == 0 {
		p.validate(&d.errs, d.lines)
	}
	if err := d.errs.err(); err != nil {
		return nil, err
	}
	p.normalize()
	return p, nil
}

// normalize fills defaults so that compiled and converted forms agree.
func (p *Policy) normalize() {
	if p.Landlock.Compatibility == "" {
		p.Landlock.Compatibility = BestEffort
	}
	if p.NetworkPolicies == nil {
		p.NetworkPolicies = map[string]*NetworkRule{}
	}
	for name, r := range p.NetworkPolicies {
		if r.Name == "" {
			r.Name = name
		}
	}
}

type decoder struct {
	errs  fieldErrors
	lines map[string]int
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs.add(path, n.Line, fmt.Sprintf(format, args...))
}

// fields walks a mapping node, calling the handler of each known key and reporting
// unknown and duplicate keys.
func (d *decoder) fields(n *yaml.Node, path string, handlers map[string]func(v *yaml.Node, path string)) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, orDoc(path), "must be a mapping (key: value), got %s", kindName(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		sub := join(path, key)
		d.lines[sub] = k.Line
		if seen[key] {
			d.fail(k, sub, "duplicate key")
			continue
		}
		seen[key] = true
		h, ok := handlers[key]
		if !ok {
			d.fail(k, sub, "unknown field %q", key)
			continue
		}
		h(resolve(v), sub)
	}
}

func (d *decoder) policy(n *yaml.Node, p *Policy) {
	if n.Kind == 0 { // empty document
		d.errs.add("version", 0, "must be 1 (the document is empty)")
		return
	}
	hasVersion := false
	d.fields(n, "", map[string]func(*yaml.Node, string){
		"version": func(v *yaml.Node, path string) { hasVersion = true; p.Version = d.int(v, path) },
		"filesystem_policy": func(v *yaml.Node, path string) {
			d.fields(v, path, map[string]func(*yaml.Node, string){
				"include_workdir": func(v *yaml.Node, path string) { p.Filesystem.IncludeWorkdir = d.bool(v, path) },
				"read_only":       func(v *yaml.Node, path string) { p.Filesystem.ReadOnly = d.strings(v, path) },
				"read_write":      func(v *yaml.Node, path string) { p.Filesystem.ReadWrite = d.strings(v, path) },
			})
		},
		"landlock": func(v *yaml.Node, path string) {
			d.fields(v, path, map[string]func(*yaml.Node, string){
				"compatibility": func(v *yaml.Node, path string) { p.Landlock.Compatibility = d.string(v, path) },
			})
		},
		"process": func(v *yaml.Node, path string) {
			d.fields(v, path, map[string]func(*yaml.Node, string){
				"run_as_user":  func(v *yaml.Node, path string) { p.Process.RunAsUser = d.string(v, path) },
				"run_as_group": func(v *yaml.Node, path string) { p.Process.RunAsGroup = d.string(v, path) },
			})
		},
		"network_policies": func(v *yaml.Node, path string) { d.networkPolicies(v, path, p) },
	})
	if !hasVersion && len(d.errs) == 0 {
		d.errs.add("version", n.Line, "is required: add `version: 1` at the top")
	}
}

func (d *decoder) networkPolicies(n *yaml.Node, path string, p *Policy) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "must be a mapping of rule name to rule, got %s", kindName(n))
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolve(n.Content[i+1])
		name := k.Value
		sub := join(path, name)
		d.lines[sub] = k.Line
		if _, dup := p.NetworkPolicies[name]; dup {
			d.fail(k, sub, "duplicate rule name")
			continue
		}
		r := &NetworkRule{}
		p.NetworkPolicies[name] = r
		d.fields(v, sub, map[string]func(*yaml.Node, string){
			"name": func(v *yaml.Node, path string) { r.Name = d.string(v, path) },
			"endpoints": func(v *yaml.Node, path string) {
				d.list(v, path, func(item *yaml.Node, path string) {
					var e Endpoint
					d.endpoint(item, path, &e)
					r.Endpoints = append(r.Endpoints, e)
				})
			},
			"binaries": func(v *yaml.Node, path string) {
				d.list(v, path, func(item *yaml.Node, path string) {
					// Upstream form is {path: /usr/bin/x}; a bare string is accepted too.
					if item.Kind == yaml.ScalarNode {
						r.Binaries = append(r.Binaries, Binary{Path: d.string(item, path)})
						return
					}
					var b Binary
					d.fields(item, path, map[string]func(*yaml.Node, string){
						"path":      func(v *yaml.Node, path string) { b.Path = d.string(v, path) },
						"ancestors": func(v *yaml.Node, path string) { b.Ancestors = d.bool(v, path) },
						"harness":   func(v *yaml.Node, path string) { d.bool(v, path) }, // deprecated, ignored
					})
					r.Binaries = append(r.Binaries, b)
				})
			},
		})
	}
}

// unsupportedEndpointFields are endpoint fields of the upstream schema that this
// supervisor cannot enforce yet: refused with a precise message, never ignored.
var unsupportedEndpointFields = []string{
	"path", "persisted_queries", "graphql_persisted_queries",
	"graphql_max_body_bytes", "websocket_credential_rewrite", "request_body_credential_rewrite",
	"credential_signing", "signing_service", "signing_region", "json_rpc_max_body_bytes", "mcp",
	"credential_binding", "allow_uninspected_credentials",
}

func (d *decoder) endpoint(n *yaml.Node, path string, e *Endpoint) {
	handlers := map[string]func(*yaml.Node, string){
		"host": func(v *yaml.Node, path string) { e.Host = d.string(v, path) },
		"port": func(v *yaml.Node, path string) { e.Port = d.int(v, path) },
		"ports": func(v *yaml.Node, path string) {
			d.list(v, path, func(i *yaml.Node, p string) { e.Ports = append(e.Ports, d.int(i, p)) })
		},
		"protocol":    func(v *yaml.Node, path string) { e.Protocol = d.string(v, path) },
		"tls":         func(v *yaml.Node, path string) { e.TLS = d.string(v, path) },
		"enforcement": func(v *yaml.Node, path string) { e.Enforcement = d.string(v, path) },
		"access":      func(v *yaml.Node, path string) { e.Access = d.string(v, path) },
		"allowed_ips": func(v *yaml.Node, path string) { e.AllowedIPs = d.strings(v, path) },
		"rules": func(v *yaml.Node, path string) {
			d.list(v, path, func(item *yaml.Node, path string) {
				// An entry without allow stays empty and validation reports it.
				var r L7Rule
				d.fields(item, path, map[string]func(*yaml.Node, string){
					"allow": func(v *yaml.Node, path string) { d.l7Rule(v, path, &r) },
				})
				e.Rules = append(e.Rules, r)
			})
		},
		"deny_rules": func(v *yaml.Node, path string) {
			d.list(v, path, func(item *yaml.Node, path string) {
				var r L7Rule
				d.l7Rule(item, path, &r)
				e.DenyRules = append(e.DenyRules, r)
			})
		},
		"allow_encoded_slash": func(v *yaml.Node, path string) { e.AllowEncodedSlash = d.bool(v, path) },
	}
	for _, f := range unsupportedEndpointFields {
		handlers[f] = func(v *yaml.Node, path string) {
			d.fail(v, path, "%s is not supported by this openshell version: remove it (L7 inspection is limited to access presets and the rules and deny_rules of protocol: rest)", f)
		}
	}
	d.fields(n, path, handlers)
}

// l7Rule reads {method, path, query} (the body of allow: or a deny_rules entry).
func (d *decoder) l7Rule(n *yaml.Node, path string, r *L7Rule) {
	handlers := map[string]func(*yaml.Node, string){
		"method": func(v *yaml.Node, path string) { r.Method = d.string(v, path) },
		"path":   func(v *yaml.Node, path string) { r.Path = d.string(v, path) },
		"query": func(v *yaml.Node, path string) {
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				return
			}
			if v.Kind != yaml.MappingNode {
				d.fail(v, path, "must be a mapping of query parameter name to {glob: G} or {any: [G, ...]}, got %s", kindName(v))
				return
			}
			r.Query = map[string]QueryMatcher{}
			for i := 0; i+1 < len(v.Content); i += 2 {
				k, qv := v.Content[i], resolve(v.Content[i+1])
				sub := join(path, k.Value)
				d.lines[sub] = k.Line
				if _, dup := r.Query[k.Value]; dup {
					d.fail(k, sub, "duplicate query parameter")
					continue
				}
				var q QueryMatcher
				if qv.Kind == yaml.ScalarNode {
					q.Glob = d.string(qv, sub) // shorthand: name: glob
				} else {
					d.fields(qv, sub, map[string]func(*yaml.Node, string){
						"glob": func(v *yaml.Node, path string) { q.Glob = d.string(v, path) },
						"any":  func(v *yaml.Node, path string) { q.Any = d.strings(v, path) },
					})
				}
				r.Query[k.Value] = q
			}
		},
	}
	for _, f := range unsupportedRuleFields {
		handlers[f] = func(v *yaml.Node, path string) {
			d.fail(v, path, "%s is not supported: openshell enforces the L7 rules of protocol: rest only (method, path, query); remove it", f)
		}
	}
	d.fields(n, path, handlers)
}

func (d *decoder) list(n *yaml.Node, path string, item func(*yaml.Node, string)) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "must be a list, got %s", kindName(n))
		return
	}
	for i, c := range n.Content {
		sub := fmt.Sprintf("%s[%d]", path, i)
		d.lines[sub] = c.Line
		item(resolve(c), sub)
	}
}

func (d *decoder) strings(n *yaml.Node, path string) []string {
	var out []string
	d.list(n, path, func(c *yaml.Node, p string) { out = append(out, d.string(c, p)) })
	return out
}

func (d *decoder) string(n *yaml.Node, path string) string {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" || n.Tag == "!!binary" {
		d.fail(n, path, "must be a string, got %s", kindName(n))
		return ""
	}
	return n.Value
}

func (d *decoder) int(n *yaml.Node, path string) int {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		d.fail(n, path, "must be an integer, got %s", kindName(n))
		return 0
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil || v < math.MinInt32 || v > math.MaxInt32 {
		d.fail(n, path, "integer %q out of range", n.Value)
		return 0
	}
	return int(v)
}

func (d *decoder) bool(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		d.fail(n, path, "must be true or false, got %s", kindName(n))
		return false
	}
	var b bool
	if err := n.Decode(&b); err != nil {
		d.fail(n, path, "must be true or false: %v", err)
	}
	return b
}

// resolve follows aliases (bounded: yaml.v3 already rejects alias cycles).
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!str":
			return fmt.Sprintf("the string %q", truncate(n.Value))
		}
		return fmt.Sprintf("%s %q", n.Tag, truncate(n.Value))
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func join(path, key string) string {
	if key == "" {
		key = `""`
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func orDoc(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}
