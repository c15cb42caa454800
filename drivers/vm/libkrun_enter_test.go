package vm_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/channel"
	"github.com/openshell/openshell/vmm/libkrun"
)

// TestRunnerLibkrunEnter: `runner --libkrun-enter SPEC` (what the libkrun backend
// starts per VM) loads the library the spec names and enters the VM. libkrun itself
// cannot run here (no package, no hardware KVM): the C stand-in library of the libkrun
// tests takes its place, records the calls and plays the guest.
func TestRunnerLibkrunEnter(t *testing.T) {
	testenv.RequireCommand(t, "gcc", "run scripts/setup-vm-host.sh (installs gcc)")
	dir := shortDir(t)
	lib := filepath.Join(dir, "libkrun.so.1")
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, "../../vmm/libkrun/testdata/standin.c").CombinedOutput(); err != nil {
		t.Fatalf("build the stand-in library: %v\n%s", err, out)
	}
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, append([]byte("\x7fELF"), make([]byte, 60)...), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := vmm.Config{Name: "enter", Kernel: kernel, StateDir: filepath.Join(dir, "v")}.WithDefaults()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	spec, err := libkrun.Plan(cfg, lib, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(spec)
	specPath := filepath.Join(dir, "libkrun.json")
	if err := os.WriteFile(specPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", channel.UnixPortPath(filepath.Join(cfg.StateDir, "vsock.sock"), channel.PortBootstrap))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	calls := filepath.Join(dir, "calls.log")
	cmd := exec.Command(os.Args[0], "runner", "--libkrun-enter", specPath)
	cmd.Env = append(os.Environ(), envRunner+"=1", "KRUN_STANDIN_LOG="+calls)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	_ = ln.(*net.UnixListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("the enter process never dialed the bootstrap port: %v\n%s", err, out.String())
	}
	defer c.Close()
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.Contains(line, "stand-in") {
		t.Fatalf("guest line %q %v", line, err)
	}
	_, _ = io.WriteString(c, "bye\n")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("enter process: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("enter process did not exit after bye")
	}
	log, _ := os.ReadFile(calls)
	if !strings.Contains(string(log), "krun_set_kernel ctx=7 kernel="+kernel+" format=1") || !strings.HasSuffix(strings.TrimSpace(string(log)), "krun_start_enter ctx=7") {
		t.Fatalf("calls:\n%s", log)
	}
	if _, err := os.Stat(spec.EnteredFile); err != nil {
		t.Fatalf("entered marker: %v", err)
	}
}
