package gpu

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const oneGPUSpec = `cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: GPU-4b6c2f1e
  containerEdits: {}
- name: all
  containerEdits: {}
containerEdits:
  env: [NVIDIA_VISIBLE_DEVICES=void]
`

func cdiDir(t *testing.T, files map[string]string) string {
	t.Helper()
	d := t.TempDir()
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(d, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestCDIResolve(t *testing.T) {
	d := cdiDir(t, map[string]string{
		"nvidia.yaml": oneGPUSpec,
		"other.json":  `{"cdiVersion":"0.6.0","kind":"vendor.example/fpga","devices":[{"name":"f0"}]}`,
		"broken.yaml": "cdiVersion: [",
		"notes.txt":   "ignored",
	})
	specs := ReadCDI([]string{d, filepath.Join(d, "missing")})
	if len(specs.Specs) != 2 || len(specs.Bad) != 1 {
		t.Fatalf("specs %d bad %v", len(specs.Specs), specs.Bad)
	}
	if got := specs.Devices(DefaultCDIKind); !slices.Equal(got, []string{"0", "GPU-4b6c2f1e"}) {
		t.Errorf("devices %v", got)
	}
	cases := []struct {
		count int
		ids   []string
		want  []string
		is    error
		says  string
	}{
		{count: 1, want: []string{"nvidia.com/gpu=0"}},
		{count: 2, want: []string{"nvidia.com/gpu=0", "nvidia.com/gpu=GPU-4b6c2f1e"}},
		{count: 3, is: ErrUnavailable, says: "gpu count 3"},
		{count: 0, is: ErrInvalid, says: "gpu count 0"},
		{ids: []string{"0"}, want: []string{"nvidia.com/gpu=0"}},
		{ids: []string{"vendor.example/fpga=f0"}, want: []string{"vendor.example/fpga=f0"}},
		{ids: []string{"1"}, is: ErrInvalid, says: `gpu device "1"`},
		{ids: []string{"0", "nvidia.com/gpu=0"}, is: ErrInvalid, says: "twice"},
		{ids: []string{"a b"}, is: ErrInvalid, says: "not a CDI device id"},
		{count: 2, ids: []string{"0"}, is: ErrInvalid, says: "agree"},
	}
	for _, tc := range cases {
		got, err := specs.Resolve("", tc.count, tc.ids)
		if tc.is != nil {
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), "") {
				t.Errorf("%d %v: err %v, want %v saying %q", tc.count, tc.ids, err, tc.is, tc.says)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%d %v: %v %v, want %v", tc.count, tc.ids, got, err, tc.want)
		}
	}
	_, err := specs.Resolve("", 3, nil)
	if !strings.Contains(err.Error(), d) || !strings.Contains(err.Error(), "list 2 nvidia.com/gpu device(s)") {
		t.Errorf("error %q does not name the dir and what it lists", err)
	}
}

func FuzzParseCDISpec(f *testing.F) {
	f.Add([]byte(oneGPUSpec))
	f.Add([]byte(`{"cdiVersion":"0.6.0","kind":"vendor.example/fpga","devices":[{"name":"f0"}]}`))
	f.Add([]byte("cdiVersion: 0.3.0\nkind: x/y\ndevices: [{name: ../..}]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseCDISpec(b)
		if err != nil {
			return
		}
		if !cdiKindRE.MatchString(s.Kind) {
			t.Fatalf("kind %q", s.Kind)
		}
		for _, d := range s.Devices {
			if !cdiNameRE.MatchString(d) || strings.Contains(d, "/") {
				t.Fatalf("device %q", d)
			}
		}
	})
}
