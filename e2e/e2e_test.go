package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/testenv"
)

// mainScript is the sandbox's main process: it records its pid and ticks into the
// logs, so restarts and log shipping are observable.
const mainScript = `echo $$ > /tmp/main.pid; i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 1; done`

func TestSandboxLifecycle(t *testing.T) {
	h := newHarness(t)
	box := uniqueName("box")
	h.create(box, "sh", "-c", mainScript)

	t.Run("exec output and exit codes", func(t *testing.T) {
		r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "sh", "-c", `echo "out $0"; echo err >&2; exit 3`, "a b")
		if r.code != 3 || r.stdout != "out a b\n" || r.stderr != "err\n" { // a remote exit code is passed on silently
			t.Fatalf("exec: code %d stdout %q stderr %q err %v", r.code, r.stdout, r.stderr, r.err)
		}
		r = h.mustRun(t, "sandbox", "exec", "-n", box, "--workdir", "/tmp", "--env", "X=y z", "--", "sh", "-c", `echo "$(pwd) $X $(id -u)"`)
		if f := strings.Fields(r.stdout); len(f) != 4 || f[0] != "/tmp" || f[1] != "y" || f[2] != "z" || f[3] == "0" {
			t.Fatalf("exec workdir/env/user: %q (must not run as root)", r.stdout)
		}
		// Orphans re-parented to the supervisor (PID 1 in a container) are reaped.
		for i := 0; i < 3; i++ {
			h.mustRun(t, "sandbox", "exec", "-n", box, "--", "sh", "-c", "(sleep 0.2 &); exit 0")
		}
		time.Sleep(2 * time.Second)
		r = h.mustRun(t, "sandbox", "exec", "-n", box, "--", "sh", "-c", `n=0; for f in /proc/[0-9]*/stat; do s=$(cut -d' ' -f3 "$f" 2>/dev/null); [ "$s" = Z ] && n=$((n+1)); done; echo zombies=$n`)
		if strings.TrimSpace(r.stdout) != "zombies=0" {
			t.Fatalf("after orphaned children exited: %q", r.stdout)
		}
		r = h.run(t.Context(), "sandbox", "exec", "-n", box, "--timeout", "1s", "--", "sleep", "30")
		if r.code != 124 || r.took > 15*time.Second {
			t.Fatalf("timeout: code %d after %v (%s)", r.code, r.took, r.stderr)
		}
	})

	t.Run("tty session with resize", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		cmd := h.command(ctx, "sandbox", "exec", "-n", box, "--tty", "--", "sh")
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out := &syncBuf{}
		go io.Copy(out, f)
		fmt.Fprintf(f, "stty size; tty\r")
		out.waitFor(t, "30 100", 20*time.Second)
		out.waitFor(t, "/dev/pts/", 5*time.Second)
		if err := pty.Setsize(f, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // SIGWINCH → resize frame
		fmt.Fprintf(f, "stty size; exit 7\r")
		out.waitFor(t, "40 120", 20*time.Second)
		err = cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
			t.Fatalf("tty exec exit: %v\n%s", err, out.String())
		}
	})

	t.Run("ssh via connect", func(t *testing.T) {
		testenv.RequireCommand(t, "ssh", "apt-get install openssh-client")
		r := h.mustRun(t, "sandbox", "connect", box, "--", "echo", "via-ssh", "$USER")
		if !strings.HasPrefix(r.stdout, "via-ssh ") || strings.TrimSpace(r.stdout) == "via-ssh root" {
			t.Fatalf("connect output %q", r.stdout)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		cmd := h.command(ctx, "sandbox", "connect", "--tty", box)
		f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 25, Cols: 90})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out := &syncBuf{}
		go io.Copy(out, f)
		fmt.Fprintf(f, "stty size; exit 5\n")
		out.waitFor(t, "25 90", 30*time.Second)
		err = cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 {
			t.Fatalf("ssh -tt exit: %v\n%s", err, out.String())
		}
	})

	t.Run("upload and download a tree with a 100 MiB file", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "tree")
		writeTree(t, src, 100<<20)
		h.mustRun(t, "sandbox", "upload", box, src, "/tmp/up")
		// The sandbox computes the same checksum.
		r := h.mustRun(t, "sandbox", "exec", "-n", box, "--", "sha256sum", "/tmp/up/big/blob.bin")
		if !strings.HasPrefix(r.stdout, fileSum(t, filepath.Join(src, "big", "blob.bin"))) {
			t.Fatalf("checksum in sandbox %q", r.stdout)
		}
		dst := t.TempDir()
		h.mustRun(t, "sandbox", "download", box, "/tmp/up", dst)
		if got, want := treeDigest(t, filepath.Join(dst, "up")), treeDigest(t, src); got != want {
			t.Fatalf("downloaded tree differs:\n%s\nwant:\n%s", got, want)
		}
	})

	t.Run("logs and follow", func(t *testing.T) {
		r := h.mustRun(t, "sandbox", "logs", box, "--tail", "50")
		if !strings.Contains(r.stdout, "tick ") {
			t.Fatalf("logs lack the main process output:\n%s", r.stdout)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		cmd := h.command(ctx, "sandbox", "logs", box, "--follow", "--tail", "1")
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		seen := 0
		for sc.Scan() && seen < 3 {
			if strings.Contains(sc.Text(), "tick ") {
				seen++
			}
		}
		cancel()
		cmd.Wait()
		if seen < 3 {
			t.Fatalf("follow delivered %d tick lines", seen)
		}
	})

	t.Run("gateway kill -9 and restart", func(t *testing.T) {
		before := h.mustRun(t, "sandbox", "exec", "-n", box, "--", "cat", "/tmp/main.pid").stdout
		h.killGatewayAndWaitReady(t, box, 5*time.Second)
		after := h.mustRun(t, "sandbox", "exec", "-n", box, "--", "cat", "/tmp/main.pid").stdout
		if before != after {
			t.Fatalf("main process restarted: pid %q → %q", before, after)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		r := h.run(t.Context(), "sandbox", "exec", "-n", "no-such-box", "--", "true")
		if r.err == nil || !strings.Contains(r.stderr, "not found") || r.took > 10*time.Second {
			t.Fatalf("exec into unknown sandbox: code %d stderr %q took %v", r.code, r.stderr, r.took)
		}
		api := pb.NewOpenShellClient(h.dial(t))
		sb, err := api.GetSandbox(t.Context(), &pb.GetSandboxRequest{Name: box})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		fw, err := api.ForwardTcp(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fw.Send(&pb.TcpForwardFrame{Payload: &pb.TcpForwardFrame_Init{Init: &pb.TcpForwardInit{
			SandboxId: sb.GetSandbox().GetMetadata().GetId(), Target: &pb.TcpForwardInit_Ssh{Ssh: &pb.SshRelayTarget{}},
			AuthorizationToken: "expired-or-forged-token"}}})
		_, err = fw.Recv()
		if c := status.Code(err); c != codes.PermissionDenied && c != codes.Unauthenticated {
			t.Fatalf("forward with a bad ssh token: %v (want PermissionDenied or Unauthenticated)", err)
		}
	})
}

// TestSessionGone: a sandbox whose supervisor session is gone answers exec with a
// clear error in bounded time, not a hang.
func TestSessionGone(t *testing.T) {
	if driver() == "vm" || driver() == "kubernetes" {
		// A VM has no container to kill, and on Kubernetes the agent-sandbox controller
		// replaces a killed pod; the session-gone path is the gateway's, covered on docker
		// and podman.
		t.Skip("kills the container with the container engine")
	}
	h := newHarness(t)
	gone := uniqueName("gone")
	h.create(gone, "sleep", "100000")
	id := containerID(t, gone)
	if out, err := engineCmd("kill", id).CombinedOutput(); err != nil {
		t.Fatalf("docker kill: %v %s", err, out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r := h.run(ctx, "sandbox", "exec", "-n", gone, "--", "true")
	if r.err == nil || ctx.Err() != nil || r.took > 20*time.Second {
		t.Fatalf("exec into a dead sandbox: code %d after %v, stderr %q", r.code, r.took, r.stderr)
	}
	if strings.TrimSpace(r.stderr) == "" {
		t.Fatal("no error message")
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuf) waitFor(t *testing.T, sub string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(s.String(), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in terminal output:\n%s", sub, s.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeTree makes a directory tree with odd modes, an empty dir and one big file.
func writeTree(t *testing.T, root string, bigSize int64) {
	t.Helper()
	for _, d := range []string{"big", "a/b/c", "empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]fs.FileMode{"a/x.txt": 0o644, "a/b/run.sh": 0o755, "a/b/c/secret": 0o600}
	for p, m := range files {
		if err := os.WriteFile(filepath.Join(root, p), []byte("content of "+p+"\n"), m); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(root, p), m)
	}
	f, err := os.Create(filepath.Join(root, "big", "blob.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, bigSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// treeDigest lists every entry with its mode and, for files, its checksum.
func treeDigest(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %s", rel, info.Mode())
		if info.Mode().IsRegular() {
			fmt.Fprintf(&b, " %s", fileSum(t, p))
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
