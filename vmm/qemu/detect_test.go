package qemu

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/openshell/openshell/vmm/channel"
)

func TestCPUKHz(t *testing.T) {
	if got := cpuKHz([]byte("model name\t: X\ncpu MHz\t\t: 2596.150\n")); got != 2596150 {
		t.Fatalf("got %d", got)
	}
	for _, bad := range []string{"", "cpu MHz : fast\n", "cpu MHz : -3\n"} {
		if got := cpuKHz([]byte(bad)); got != 0 {
			t.Fatalf("%q gave %d", bad, got)
		}
	}
}

func FuzzCPUKHz(f *testing.F) {
	f.Add([]byte("flags\t: vmx sse\ncpu MHz\t: 1000.5\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if k := cpuKHz(b); k < 0 || k > 1e9 {
			t.Fatalf("khz %d", k)
		}
	})
}

// TestDetectAccelHere: without usable hardware KVM, auto is TCG and says why.
func TestDetectAccelHere(t *testing.T) {
	got := DetectAccel()
	if got.Name != AccelKVM && got.Name != AccelTCG || got.Reason == "" {
		t.Fatalf("DetectAccel = %+v", got)
	}
	t.Logf("DetectAccel: %+v", got)
}

func TestDetectTransportPrefersVsockBackend(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PATH", dir)
	t.Setenv("OPENSHELL_VM_DIR", dir)
	if _, err := os.Stat("/dev/vhost-vsock"); err == nil {
		t.Skip("host has /dev/vhost-vsock")
	}
	if got := DetectTransport(); got.Name != channel.TransportVirtioSerial {
		t.Fatalf("no backend: %+v", got)
	}
	bin := filepath.Join(dir, "bin", channel.VsockBackendName)
	_ = os.MkdirAll(filepath.Dir(bin), 0o755)
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := DetectTransport(); got.Name != channel.TransportVhostUserVsock || got.Backend != bin {
		t.Fatalf("with backend: %+v", got)
	}
}
