package supervisor

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/sandboxuser"
)

// TestHideTokenFile: a token file owned by the sandbox user (mode 0600) is covered:
// the supervisor keeps the token in memory, and a process running as the sandbox
// user gets EACCES opening the path.
func TestHideTokenFile(t *testing.T) {
	testenv.RequireRoot(t)
	dir := agentReachableDir(t, "tokenhide")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("secret-token-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := &sandboxuser.User{Name: "agent", UID: 54321, GID: 54321}
	if err := os.Chown(tokenFile, int(agent.UID), int(agent.GID)); err != nil {
		t.Fatal(err)
	}
	read := func() (string, error) {
		cmd := exec.Command("cat", tokenFile)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: agent.UID, Gid: agent.GID}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := read(); err != nil || !strings.Contains(out, "secret-token-value") {
		t.Fatalf("control: the agent cannot read its own uncovered file (%v %q)", err, out)
	}
	cfg := &bootstrap.Config{TokenFile: tokenFile}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := hideTokenFile(cfg, agent, filepath.Join(dir, "run"), log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(tokenFile, unix.MNT_DETACH) })
	if tok, err := cfg.LoadToken(); err != nil || tok != "secret-token-value" {
		t.Fatalf("the supervisor's token after covering = %q, %v", tok, err)
	}
	out, err := read()
	if err == nil || !strings.Contains(out, "Permission denied") || strings.Contains(out, "secret-token-value") {
		t.Fatalf("the agent reading the covered token: %v %q, want Permission denied", err, out)
	}
	// Covering twice (a second supervisor start) fails clearly: the cover is empty.
	if err := hideTokenFile(&bootstrap.Config{TokenFile: tokenFile}, agent, filepath.Join(dir, "run"), log); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("covering again: %v", err)
	}
}

func TestAgentCanRead(t *testing.T) {
	u := &sandboxuser.User{UID: 1000, GID: 1000, Groups: []uint32{1000, 27}}
	for _, tc := range []struct {
		uid, gid uint32
		mode     uint32
		want     bool
	}{
		{1000, 1000, 0o600, true},
		{1000, 0, 0o200, false},
		{0, 0, 0o600, false},
		{0, 0, 0o644, true},
		{0, 1000, 0o640, true},
		{0, 27, 0o640, true},
		{0, 28, 0o640, false},
		{0, 1000, 0o600, false},
	} {
		st := &syscall.Stat_t{Uid: tc.uid, Gid: tc.gid, Mode: syscall.S_IFREG | tc.mode}
		if got := agentCanRead(st, u); got != tc.want {
			t.Errorf("owner %d:%d mode %04o: agentCanRead = %v, want %v", tc.uid, tc.gid, tc.mode, got, tc.want)
		}
	}
}
