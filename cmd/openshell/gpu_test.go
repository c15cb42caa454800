package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/doctor"
	"github.com/openshell/openshell/internal/gpu/gputest"
)

// parseCreate parses argv the way `sandbox create` does and returns the request it
// builds (or the error).
func parseCreate(t *testing.T, argv ...string) (*openshellv1.CreateSandboxRequest, []string, error) {
	t.Helper()
	var o createOptions
	var req *openshellv1.CreateSandboxRequest
	var rest []string
	cmd := &cobra.Command{Use: "create", SilenceErrors: true, SilenceUsage: true, RunE: func(cmd *cobra.Command, args []string) error {
		args = takeGPUCount(cmd, &o.gpu, args)
		rest = args
		var err error
		req, err = buildCreateRequest(o, "", args)
		return err
	}}
	addGPUFlags(cmd, &o.gpu, &o.gpuDevices)
	cmd.SetArgs(argv)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	err := cmd.Execute()
	return req, rest, err
}

func TestGPUFlags(t *testing.T) {
	for _, tc := range []struct {
		argv    []string
		count   uint32 // 0 = no GPU asked
		devices []string
		command []string
	}{
		{nil, 0, nil, nil},
		{[]string{"--gpu"}, 1, nil, nil},
		{[]string{"--gpu", "--", "nvidia-smi"}, 1, nil, []string{"nvidia-smi"}},
		{[]string{"--gpu", "2"}, 2, nil, nil},
		{[]string{"--gpu", "2", "--", "sleep", "1"}, 2, nil, []string{"sleep", "1"}},
		{[]string{"--gpu=3"}, 3, nil, nil},
		{[]string{"--gpu", "--", "4"}, 1, nil, []string{"4"}},
		{[]string{"--gpu-device", "0000:03:00.0", "--gpu-device", "0000:23:00.0"}, 2, []string{"0000:03:00.0", "0000:23:00.0"}, nil},
		{[]string{"--gpu", "1", "--gpu-device", "nvidia.com/gpu=0"}, 1, []string{"nvidia.com/gpu=0"}, nil},
	} {
		t.Run(strings.Join(tc.argv, " "), func(t *testing.T) {
			req, rest, err := parseCreate(t, tc.argv...)
			if err != nil {
				t.Fatal(err)
			}
			g := req.GetSpec().GetResourceRequirements().GetGpu()
			if tc.count == 0 != (g == nil) || g != nil && g.GetCount() != tc.count {
				t.Fatalf("gpu %v, want count %d", g, tc.count)
			}
			if !slices.Equal(rest, tc.command) {
				t.Errorf("command %q, want %q", rest, tc.command)
			}
			dc := req.GetSpec().GetTemplate().GetDriverConfig().GetFields()
			for _, drv := range []string{"vm", "docker", "podman"} {
				var got []string
				for _, v := range dc[drv].GetStructValue().GetFields()["gpu_devices"].GetListValue().GetValues() {
					got = append(got, v.GetStringValue())
				}
				if !slices.Equal(got, tc.devices) {
					t.Errorf("driver_config.%s.gpu_devices = %v, want %v", drv, got, tc.devices)
				}
			}
		})
	}
}

// Bad --gpu input fails before any gateway is asked, naming the flag.
func TestGPUFlagsBadInput(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		says string
	}{
		{[]string{"--gpu", "0"}, "--gpu 0: the GPU count must be a whole number of at least 1"},
		{[]string{"--gpu", "-1"}, "--gpu -1: the GPU count must be a whole number of at least 1"},
		{[]string{"--gpu=-1"}, `invalid argument "-1" for "--gpu" flag: the GPU count must be a whole number of at least 1`},
		{[]string{"--gpu=0"}, `invalid argument "0" for "--gpu" flag`},
		{[]string{"--gpu=two"}, `invalid argument "two" for "--gpu" flag`},
		{[]string{"--gpu", "2", "--gpu-device", "0000:03:00.0"}, "--gpu 2 with 1 --gpu-device"},
		{[]string{"--gpu-device", "0000:03:00.0,0000:23:00.0"}, "one PCI address"},
		{[]string{"--gpu-device", ""}, "--gpu-device \"\""},
	} {
		t.Run(strings.Join(tc.argv, " "), func(t *testing.T) {
			root, _ := newRoot()
			root.SetArgs(append([]string{"-g", "no-such-gateway-for-gpu-tests", "sandbox", "create"}, tc.argv...))
			root.SetOut(&bytes.Buffer{})
			root.SetErr(&bytes.Buffer{})
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("err = %v, want %q", err, tc.says)
			}
			if strings.Contains(err.Error(), "no-such-gateway") {
				t.Errorf("the gateway was consulted before the flag was checked: %v", err)
			}
		})
	}
}

// treeDigest hashes every path, mode, link target and content of a tree.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, _ := e.Info()
		fmt.Fprintf(h, "%s %v %v\n", p, info.Mode(), info.ModTime().UnixNano())
		if e.Type()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			fmt.Fprintln(h, l)
		} else if !e.IsDir() {
			b, _ := os.ReadFile(p)
			h.Write(b)
		}
		return nil
	})
	return fmt.Sprintf("%x", h.Sum(nil))
}

func runGPUList(t *testing.T, tree string, args ...string) string {
	t.Helper()
	root, _ := newRoot()
	var out bytes.Buffer
	root.SetArgs(append([]string{"gpu", "list", "--sysfs-root", filepath.Join(tree, "sys"), "--proc-root", filepath.Join(tree, "proc"),
		"--gpu-state-dir", filepath.Join(tree, "gpustate")}, args...))
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// On the recorded H200 host: the GPU is listed, cannot be passed through because the
// host has no IOMMU, the fix is given, and nothing under the tree changed.
func TestGPUListH200(t *testing.T) {
	tree := gputest.CopyTree(t, "h200")
	before := treeDigest(t, tree)
	table := runGPUList(t, tree)
	for _, w := range []string{"0000:00:06.0", "10de:2335", "3D controller", "nvidia", "no", "no IOMMU", "intel_iommu=on", "amd_iommu=on"} {
		if !strings.Contains(table, w) {
			t.Errorf("table lacks %q:\n%s", w, table)
		}
	}
	var inv struct {
		IOMMU bool `json:"iommu"`
		GPUs  []struct {
			BDF         string `json:"bdf"`
			Class       uint32 `json:"class"`
			Driver      string `json:"driver"`
			Passthrough bool   `json:"passthrough"`
			Reasons     []struct{ Code, Fix string }
		} `json:"gpus"`
	}
	if err := json.Unmarshal([]byte(runGPUList(t, tree, "-o", "json")), &inv); err != nil {
		t.Fatal(err)
	}
	if inv.IOMMU || len(inv.GPUs) != 1 {
		t.Fatalf("%+v", inv)
	}
	g := inv.GPUs[0]
	if g.BDF != "0000:00:06.0" || g.Class != 0x030200 || g.Driver != "nvidia" || g.Passthrough || g.Reasons[0].Code != "no-iommu" || !strings.Contains(g.Reasons[0].Fix, "intel_iommu=on") {
		t.Errorf("json GPU %+v", g)
	}
	if after := treeDigest(t, tree); after != before {
		t.Error("gpu list changed the sysfs tree")
	}
	if _, err := os.Stat(filepath.Join(tree, "gpustate")); err == nil {
		t.Error("gpu list created the GPU state dir")
	}
	f := doctor.GPUFindings(filepath.Join(tree, "sys"), filepath.Join(tree, "proc"))
	if len(f) != 1 || f[0].Status != doctor.Warn || !strings.Contains(f[0].Fix, "intel_iommu=on") {
		t.Errorf("doctor findings %+v", f)
	}
}

func TestGPUListShapes(t *testing.T) {
	for _, tc := range []struct {
		tree string
		want []string
	}{
		{"single", []string{"0000:01:00.0", "13 (0000:01:00.1 function)", "yes"}},
		{"shared-nic", []string{"0000:03:00.0", "0000:04:00.0 other", "not a bridge", "ACS", "0000:05:00.0"}},
		{"hgx8", []string{"0000:e3:00.0", "10de:2330"}},
	} {
		out := runGPUList(t, gputest.TreeDir(tc.tree))
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: table lacks %q:\n%s", tc.tree, w, out)
			}
		}
	}
	if f := doctor.GPUFindings(filepath.Join(gputest.TreeDir("hgx8"), "sys"), "/nonexistent"); len(f) != 8 || f[0].Status != doctor.OK {
		t.Errorf("doctor on the 8-GPU host: %+v", f)
	}
	if f := doctor.GPUFindings(t.TempDir(), "/nonexistent"); len(f) != 1 || f[0].Status != doctor.Warn {
		t.Errorf("doctor without sysfs: %+v", f)
	}
}
