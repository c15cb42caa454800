package main

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pkg/sftp"
)

// TestSFTPServerSubcommand runs the built binary's sftp-server mode (what the SSH
// server re-executes as the sandbox user) and speaks SFTP to it over its stdio.
func TestSFTPServerSubcommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "openshell-sandbox")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "sftp-server")
	cmd.Dir = dir
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	c, err := sftp.NewClientPipe(stdout, stdin)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.Create("hello.txt") // relative to the server's working directory
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("hi"))
	f.Close()
	c.Close()
	if data, err := os.ReadFile(filepath.Join(dir, "hello.txt")); err != nil || !bytes.Equal(data, []byte("hi")) {
		t.Fatalf("file = %q, %v", data, err)
	}

	// The confinement helper is dispatched before anything else: a malformed call
	// exits 126 naming its usage and runs nothing.
	out, err := exec.Command(bin, "confine-exec", "--spec", "x", "--", "/bin/true").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 126 || !strings.Contains(string(out), "want an inherited file descriptor") {
		t.Fatalf("confine-exec usage: %v %s", err, out)
	}

	// A bad --bootstrap mode is a usage error, not a hang.
	out, err = exec.Command(bin, "--bootstrap", "floppy").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "use env or vsock") {
		t.Fatalf("bad mode: %v %s", err, out)
	}
	// Env mode without configuration names the missing variable.
	cmd = exec.Command(bin)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "OPENSHELL_ENDPOINT") {
		t.Fatalf("no config: %v %s", err, out)
	}
}

// TestEarlyRecords: the lines logged before the run reach the console (at its level)
// and are kept from Info up, with their attributes and times, whatever that level.
func TestEarlyRecords(t *testing.T) {
	var console bytes.Buffer
	h := &earlyRecords{next: slog.NewTextHandler(&console, &slog.HandlerOptions{Level: slog.LevelWarn})}
	log := slog.New(h)
	log.Debug("not kept")
	log.Info("clock set to the host's", "was_behind", "12ms")
	log.Warn("cannot set the hostname", "err", "EPERM")
	if len(h.recs) != 2 || h.recs[0].Message != "clock set to the host's" || h.recs[1].Level != slog.LevelWarn {
		t.Fatalf("kept %d records: %+v", len(h.recs), h.recs)
	}
	var attr string
	h.recs[0].Attrs(func(a slog.Attr) bool { attr = a.Key + "=" + a.Value.String(); return true })
	if attr != "was_behind=12ms" || h.recs[0].Time.IsZero() {
		t.Fatalf("first record's attribute %q, time %v", attr, h.recs[0].Time)
	}
	if out := console.String(); strings.Contains(out, "clock set") || !strings.Contains(out, "cannot set the hostname") {
		t.Fatalf("console at Warn got:\n%s", out)
	}
}
