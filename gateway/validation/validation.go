// Package validation holds the rules for user-supplied sandbox fields (names, labels,
// environment keys) shared by the gateway API and the CLI, so both reject the same
// input with the same message. Every error names the field and the rule.
package validation

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/openshellv1"
)

// ErrInvalid is wrapped by every validation error (INVALID_ARGUMENT at the API edge).
var ErrInvalid = errors.New("invalid argument")

const (
	MaxNameLen       = 63
	MaxLabelValueLen = 63
	MaxLabelKeyLen   = 63
	MaxLabelPrefix   = 253
	MaxEnvValueLen   = 128 * 1024
)

var (
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	labelName  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	dnsSubdom  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	envKeyRule = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

func invalid(format string, a ...any) error {
	return fmt.Errorf(format+": %w", append(a, ErrInvalid)...)
}

// Name checks a sandbox name: a DNS label (lowercase letters, digits and '-', starting
// and ending with a letter or digit, at most 63 characters). field names the field.
func Name(field, name string) error {
	switch {
	case name == "":
		return invalid("%s is empty; give a DNS label such as my-sandbox", field)
	case len(name) > MaxNameLen:
		return invalid("%s %q is %d characters; a DNS label has at most %d", field, trunc(name), len(name), MaxNameLen)
	case !dnsLabel.MatchString(name):
		return invalid("%s %q is not a DNS label: use lowercase letters, digits and '-', starting and ending with a letter or digit", field, trunc(name))
	}
	return nil
}

// Workspace checks a workspace name (empty = default).
func Workspace(ws string) error {
	if ws == "" {
		return nil
	}
	return Name("workspace", ws)
}

// LabelKey checks a label key: an optional DNS-subdomain prefix and '/', then a name of
// at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with
// a letter or digit.
func LabelKey(field, k string) error {
	name := k
	if prefix, rest, ok := strings.Cut(k, "/"); ok {
		if prefix == "" || len(prefix) > MaxLabelPrefix || !dnsSubdom.MatchString(prefix) {
			return invalid("%s key %q: prefix %q must be a lowercase DNS subdomain (e.g. example.com)", field, trunc(k), trunc(prefix))
		}
		name = rest
	}
	switch {
	case name == "":
		return invalid("%s key %q has an empty name", field, trunc(k))
	case len(name) > MaxLabelKeyLen:
		return invalid("%s key %q: the name part is longer than %d characters", field, trunc(k), MaxLabelKeyLen)
	case !labelName.MatchString(name):
		return invalid("%s key %q: use letters, digits, '-', '_' and '.', starting and ending with a letter or digit", field, trunc(k))
	}
	return nil
}

// LabelValue checks a label value (may be empty).
func LabelValue(field, k, v string) error {
	switch {
	case v == "":
		return nil
	case len(v) > MaxLabelValueLen:
		return invalid("%s %q: value is longer than %d characters", field, trunc(k), MaxLabelValueLen)
	case !labelName.MatchString(v):
		return invalid("%s %q: value %q must use letters, digits, '-', '_' and '.', starting and ending with a letter or digit", field, trunc(k), trunc(v))
	}
	return nil
}

// Labels checks a label map.
func Labels(field string, m map[string]string) error {
	for k, v := range m {
		if err := LabelKey(field, k); err != nil {
			return err
		}
		if err := LabelValue(field, k, v); err != nil {
			return err
		}
	}
	return nil
}

// EnvKey checks an environment variable name: ^[A-Za-z_][A-Za-z0-9_]*$.
func EnvKey(field, k string) error {
	if !envKeyRule.MatchString(k) {
		return invalid("%s key %q must match [A-Za-z_][A-Za-z0-9_]* (letters, digits and '_', not starting with a digit)", field, trunc(k))
	}
	return nil
}

// Env checks an environment map.
func Env(field string, m map[string]string) error {
	for k, v := range m {
		if err := EnvKey(field, k); err != nil {
			return err
		}
		if strings.ContainsRune(v, 0) {
			return invalid("%s %s: value contains a NUL byte", field, k)
		}
		if !utf8.ValidString(v) {
			return invalid("%s %s: value is not valid UTF-8", field, k)
		}
		if len(v) > MaxEnvValueLen {
			return invalid("%s %s: value is longer than %d bytes", field, k, MaxEnvValueLen)
		}
	}
	return nil
}

// ParseKeyValue splits "K=V" (as given to --env and --label). field names the flag.
func ParseKeyValue(field, s string) (string, string, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", invalid("%s %q has no '='; write KEY=VALUE", field, trunc(s))
	}
	if k == "" {
		return "", "", invalid("%s %q has an empty key; write KEY=VALUE", field, trunc(s))
	}
	return k, v, nil
}

// Command checks an argv.
func Command(field string, argv []string) error {
	for i, a := range argv {
		if strings.ContainsRune(a, 0) {
			return invalid("%s[%d] contains a NUL byte", field, i)
		}
		if !utf8.ValidString(a) {
			return invalid("%s[%d] is not valid UTF-8", field, i)
		}
	}
	return nil
}

// CreateRequest checks a CreateSandboxRequest before defaults are filled.
func CreateRequest(req *openshellv1.CreateSandboxRequest) error {
	if req == nil {
		return invalid("request is empty")
	}
	if req.GetName() != "" {
		if err := Name("name", req.GetName()); err != nil {
			return err
		}
	}
	if err := Workspace(req.GetWorkspace()); err != nil {
		return err
	}
	if err := Labels("labels", req.GetLabels()); err != nil {
		return err
	}
	for k, v := range req.GetAnnotations() {
		if k == "" || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return invalid("annotations key %q: keys must be non-empty and keys and values valid UTF-8", trunc(k))
		}
	}
	spec := req.GetSpec()
	if spec == nil {
		return invalid("spec is required; send at least an empty spec")
	}
	if err := Env("spec.environment", spec.GetEnvironment()); err != nil {
		return err
	}
	if err := Command("spec.command", spec.GetCommand()); err != nil {
		return err
	}
	if len(spec.GetProviders()) > 0 {
		for i, p := range spec.GetProviders() {
			if !utf8.ValidString(p) {
				return invalid("spec.providers[%d] is not valid UTF-8", i)
			}
		}
	}
	switch strings.ToLower(spec.GetLogLevel()) {
	case "", "trace", "debug", "info", "warn", "warning", "error":
	default:
		return invalid("spec.log_level %q is not one of trace, debug, info, warn, error", trunc(spec.GetLogLevel()))
	}
	if t := spec.GetTemplate(); t != nil {
		if strings.ContainsAny(t.GetImage(), " \t\r\n") || !utf8.ValidString(t.GetImage()) {
			return invalid("spec.template.image %q contains whitespace; give an image reference such as docker.io/library/ubuntu:24.04", trunc(t.GetImage()))
		}
		if err := Labels("spec.template.labels", t.GetLabels()); err != nil {
			return err
		}
		if err := Env("spec.template.environment", t.GetEnvironment()); err != nil {
			return err
		}
		if err := resources(t.GetResources()); err != nil {
			return err
		}
		for k, v := range t.GetDriverConfig().GetFields() {
			if _, ok := v.GetKind().(*structpb.Value_StructValue); !ok {
				return invalid("spec.template.driver_config.%s must be an object (the options for driver %q)", trunc(k), trunc(k))
			}
		}
	}
	return nil
}

func resources(s *structpb.Struct) error {
	for _, sect := range []string{"requests", "limits"} {
		v, ok := s.GetFields()[sect]
		if !ok {
			continue
		}
		st := v.GetStructValue()
		if st == nil {
			return invalid("spec.template.resources.%s must be an object like {cpu: \"2\", memory: \"4Gi\"}", sect)
		}
		for _, k := range []string{"cpu", "memory"} {
			if q, ok := st.GetFields()[k]; ok {
				if _, isStr := q.GetKind().(*structpb.Value_StringValue); !isStr {
					if _, isNum := q.GetKind().(*structpb.Value_NumberValue); !isNum {
						return invalid("spec.template.resources.%s.%s must be a quantity string such as \"2\" or \"4Gi\"", sect, k)
					}
				}
			}
		}
	}
	return nil
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
