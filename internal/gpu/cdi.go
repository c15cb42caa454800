package gpu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultCDIKind is the CDI kind of NVIDIA GPUs (nvidia-ctk cdi generate).
const DefaultCDIKind = "nvidia.com/gpu"

// cdiAll is the device name CDI generators use for "every GPU"; it is not one GPU.
const cdiAll = "all"

var (
	cdiKindRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]*/[a-zA-Z0-9][a-zA-Z0-9._-]*$`)
	cdiNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._:-]*$`)
)

// CDISpec is what the container engines need from a CDI spec file: its kind and
// device names (the container edits are the engine's business).
type CDISpec struct {
	Path    string
	Kind    string
	Devices []string
}

// ParseCDISpec reads one CDI spec document (JSON or YAML).
func ParseCDISpec(b []byte) (*CDISpec, error) {
	var doc struct {
		CDIVersion string `yaml:"cdiVersion"`
		Kind       string `yaml:"kind"`
		Devices    []struct {
			Name string `yaml:"name"`
		} `yaml:"devices"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("not a CDI spec: %w", err)
	}
	if doc.CDIVersion == "" {
		return nil, errors.New("cdiVersion is missing")
	}
	if !cdiKindRE.MatchString(doc.Kind) {
		return nil, fmt.Errorf("kind %q is not vendor/class (e.g. nvidia.com/gpu)", doc.Kind)
	}
	s := &CDISpec{Kind: doc.Kind}
	for i, d := range doc.Devices {
		if !cdiNameRE.MatchString(d.Name) {
			return nil, fmt.Errorf("devices[%d].name %q is not a CDI device name", i, d.Name)
		}
		if slices.Contains(s.Devices, d.Name) {
			return nil, fmt.Errorf("devices[%d].name %q is listed twice", i, d.Name)
		}
		s.Devices = append(s.Devices, d.Name)
	}
	return s, nil
}

// CDISpecs are the specs of an engine's CDI directories.
type CDISpecs struct {
	Dirs  []string
	Specs []*CDISpec
	// Bad are files that could not be read as CDI specs (the engines skip them too).
	Bad []error
}

// ReadCDI reads every *.json, *.yaml and *.yml file of dirs (missing dirs are empty).
func ReadCDI(dirs []string) *CDISpecs {
	out := &CDISpecs{Dirs: dirs}
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				out.Bad = append(out.Bad, fmt.Errorf("CDI dir %s: %w", dir, err))
			}
			continue
		}
		for _, e := range ents {
			ext := filepath.Ext(e.Name())
			if e.IsDir() || (ext != ".json" && ext != ".yaml" && ext != ".yml") {
				continue
			}
			p := filepath.Join(dir, e.Name())
			b, err := os.ReadFile(p)
			if err == nil {
				var s *CDISpec
				if s, err = ParseCDISpec(b); err == nil {
					s.Path = p
					out.Specs = append(out.Specs, s)
					continue
				}
			}
			out.Bad = append(out.Bad, fmt.Errorf("CDI spec %s: %w", p, err))
		}
	}
	return out
}

// Devices are the device names of kind, without "all", in a stable order (numbers
// numerically, then names).
func (c *CDISpecs) Devices(kind string) []string {
	var out []string
	for _, s := range c.Specs {
		if s.Kind != kind {
			continue
		}
		for _, d := range s.Devices {
			if d != cdiAll && !slices.Contains(out, d) {
				out = append(out, d)
			}
		}
	}
	slices.SortFunc(out, func(a, b string) int {
		na, ea := strconv.Atoi(a)
		nb, eb := strconv.Atoi(b)
		switch {
		case ea == nil && eb == nil:
			return na - nb
		case ea == nil:
			return -1
		case eb == nil:
			return 1
		}
		return strings.Compare(a, b)
	})
	return out
}

func (c *CDISpecs) has(kind, name string) bool {
	for _, s := range c.Specs {
		if s.Kind == kind && slices.Contains(s.Devices, name) {
			return true
		}
	}
	return false
}

func (c *CDISpecs) where() string {
	w := "the CDI specs in " + strings.Join(c.Dirs, ", ")
	if len(c.Bad) > 0 {
		w += fmt.Sprintf(" (%d file(s) unreadable: %v)", len(c.Bad), errors.Join(c.Bad...))
	}
	return w
}

// Resolve turns a GPU request into fully qualified CDI device ids (kind=name) the
// engine knows: ids are checked one by one (a bare name means kind's), a count takes
// that many of kind's devices. Errors wrap ErrInvalid (bad id) or ErrUnavailable
// (too few devices).
func (c *CDISpecs) Resolve(kind string, count int, ids []string) ([]string, error) {
	if kind == "" {
		kind = DefaultCDIKind
	}
	if len(ids) > 0 {
		if count > 0 && count != len(ids) {
			return nil, fmt.Errorf("gpu count %d but %d gpu devices named: give one or make them agree: %w", count, len(ids), ErrInvalid)
		}
		var out []string
		for _, id := range ids {
			k, name, ok := strings.Cut(id, "=")
			if !ok {
				k, name = kind, id
			}
			if !cdiKindRE.MatchString(k) || !cdiNameRE.MatchString(name) {
				return nil, fmt.Errorf("gpu device %q is not a CDI device id: write NAME (e.g. 0) or KIND=NAME (e.g. %s=0): %w", id, kind, ErrInvalid)
			}
			if !c.has(k, name) {
				return nil, fmt.Errorf("gpu device %q: %s list no device %s=%s (they list %s: %s): %w",
					id, c.where(), k, name, k, orNone(c.Devices(k)), ErrInvalid)
			}
			full := k + "=" + name
			if slices.Contains(out, full) {
				return nil, fmt.Errorf("gpu device %q is listed twice: %w", id, ErrInvalid)
			}
			out = append(out, full)
		}
		return out, nil
	}
	if count < 1 {
		return nil, fmt.Errorf("gpu count %d: ask for at least 1 GPU: %w", count, ErrInvalid)
	}
	devs := c.Devices(kind)
	if len(devs) < count {
		return nil, fmt.Errorf("gpu count %d: %s list %d %s device(s) (%s): ask for at most %d, or add a spec (nvidia-ctk cdi generate): %w",
			count, c.where(), len(devs), kind, orNone(devs), len(devs), ErrUnavailable)
	}
	out := make([]string, count)
	for i, d := range devs[:count] {
		out[i] = kind + "=" + d
	}
	return out, nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
