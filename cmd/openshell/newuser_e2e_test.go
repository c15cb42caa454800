package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/openshell/openshell/internal/testenv"
)

// busyboxImage has no /bin/bash: only busybox's sh (scripts/testimage/build.sh).
const busyboxImage = "openshell-test/busybox"

// TestDockerNewUserDefaults is what a new user meets first, on the Docker driver with
// the real gateway, dockerd and static supervisor:
//   - a busybox image with no command is READY and stays READY (no /bin/bash needed),
//     and exec there runs in its sh;
//   - a command that cannot start (/bin/bash on busybox) fails saying why;
//   - a create the driver refuses (--memory 1) prints why and leaves `sandbox list`
//     unchanged;
//   - --forward at create and forward start/list/stop carry HTTP to a port inside;
//   - `sandbox create --name x` on a terminal (a real pty) drops into a shell in the
//     sandbox, and --upload copied a file in before that.
func TestDockerNewUserDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker and builds three binaries")
	}
	ok, why := dockerReady()
	testenv.Require(t, ok, why)
	out, err := exec.Command("docker", "image", "inspect", busyboxImage).CombinedOutput()
	testenv.Require(t, err == nil, "test image "+busyboxImage+" missing; run scripts/testimage/build.sh ("+strings.TrimSpace(string(out))+")")
	tmp := cliEnv(t, "openshell-gateway", "openshell-sandbox", "openshell")
	t.Setenv("OPENSHELL_GATEWAY", "newuser") // every command below talks to this gateway
	bin := filepath.Join(tmp, "openshell")
	cli := func(timeout time.Duration, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		return string(out), err
	}
	port := strconv.Itoa(freePort(t))
	if out, err := cli(90*time.Second, "gateway", "start", "--drivers", "docker", "--port", port); err != nil {
		t.Fatalf("gateway start: %v\n%s", err, out)
	}
	suffix := strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	bb, attached, fw, nobash := "bb-"+suffix, "tty-"+suffix, "fw-"+suffix, "nobash-"+suffix
	t.Cleanup(func() {
		cli(30*time.Second, "forward", "stop", fw)
		cli(60*time.Second, "sandbox", "delete", bb, attached, fw, nobash)
		if out, err := cli(30*time.Second, "gateway", "stop"); err != nil {
			t.Errorf("gateway stop: %v\n%s", err, out)
		}
	})
	list := func() string {
		out, err := cli(30*time.Second, "sandbox", "list", "-o", "json")
		if err != nil {
			t.Fatalf("sandbox list: %v\n%s", err, out)
		}
		var sbs []struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		if err := json.Unmarshal([]byte(out), &sbs); err != nil {
			t.Fatalf("sandbox list -o json: %v\n%s", err, out)
		}
		var names []string
		for _, s := range sbs {
			names = append(names, s.Metadata.Name)
		}
		return strings.Join(names, ",")
	}

	t.Run("BusyboxDefaultCommandStaysReady", func(t *testing.T) {
		t0 := time.Now()
		out, err := cli(150*time.Second, "sandbox", "create", "--name", bb, "--from", busyboxImage, "--timeout", "120s")
		if err != nil || !strings.Contains(out, "READY") {
			t.Fatalf("create: %v\n%s", err, out)
		}
		t.Logf("create → READY in %v", time.Since(t0).Round(time.Millisecond))
		// Long enough for a shell that could not start, or exited, to be reported.
		time.Sleep(8 * time.Second)
		out, err = cli(30*time.Second, "sandbox", "get", bb, "-o", "json")
		if err != nil || !strings.Contains(out, "SANDBOX_PHASE_READY") {
			t.Fatalf("sandbox not READY 8 s after create: %v\n%s", err, out)
		}
		out, err = cli(60*time.Second, "sandbox", "exec", "-n", bb, "--", "sh", "-c", "test ! -e /bin/bash && echo no-bash-$((6*7))")
		if err != nil || !strings.Contains(out, "no-bash-42") {
			t.Fatalf("exec in the busybox sandbox: %v\n%s", err, out)
		}
	})

	t.Run("Forward", func(t *testing.T) {
		www := filepath.Join(t.TempDir(), "index.html")
		if err := os.WriteFile(www, []byte("served-through-the-gateway\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		local, local2 := freePort(t), freePort(t)
		out, err := cli(150*time.Second, "sandbox", "create", "--name", fw, "--from", busyboxImage, "--timeout", "120s", "--detach",
			"--upload", www+":/sandbox/index.html", "--forward", strconv.Itoa(local)+":8080",
			"--", "busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/sandbox")
		if err != nil {
			t.Fatalf("create --forward: %v\n%s", err, out)
		}
		get := func(port int) (string, error) {
			c := http.Client{Timeout: 20 * time.Second}
			resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/index.html")
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			return string(b), err
		}
		if body, err := get(local); err != nil || body != "served-through-the-gateway\n" {
			flog, _ := os.ReadFile(filepath.Join(tmp, "config", "openshell", "gateways", "newuser", "forwards", strconv.Itoa(local)+".log"))
			logs, _ := cli(30*time.Second, "sandbox", "logs", fw)
			t.Fatalf("GET through --forward: %q, %v\nforward log:\n%s\nsandbox logs:\n%s", body, err, flog, logs)
		}
		if out, err := cli(30*time.Second, "forward", "start", fw, strconv.Itoa(local2)+":8080"); err != nil {
			t.Fatalf("forward start: %v\n%s", err, out)
		}
		if body, err := get(local2); err != nil || !strings.Contains(body, "served-through") {
			t.Fatalf("GET through forward start: %q, %v", body, err)
		}
		out, err = cli(30*time.Second, "forward", "list", "-o", "json")
		var recs []forwardRecord
		if err != nil || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 2 {
			t.Fatalf("forward list: %v\n%s", err, out)
		}
		if out, err := cli(30*time.Second, "forward", "stop", fw, strconv.Itoa(local)); err != nil {
			t.Fatalf("forward stop: %v\n%s", err, out)
		}
		if _, err := get(local); err == nil {
			t.Errorf("port %d still answers after forward stop", local)
		}
		if _, err := get(local2); err != nil {
			t.Errorf("stopping one forward stopped the other: %v", err)
		}
		if out, err := cli(30*time.Second, "forward", "stop", fw); err != nil {
			t.Fatalf("forward stop (all): %v\n%s", err, out)
		}
		if out, err := cli(30*time.Second, "forward", "list"); err != nil || strings.Contains(out, fw) {
			t.Errorf("forward list after stop: %v\n%s", err, out)
		}
		// A forward ends with its sandbox.
		if out, err := cli(30*time.Second, "forward", "start", fw, strconv.Itoa(local)+":8080"); err != nil {
			t.Fatalf("forward start: %v\n%s", err, out)
		}
		if out, err := cli(60*time.Second, "sandbox", "delete", fw); err != nil {
			t.Fatalf("sandbox delete: %v\n%s", err, out)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := cli(30*time.Second, "forward", "list")
			if err == nil && !strings.Contains(out, fw) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("forward still running 30 s after its sandbox was deleted:\n%s", out)
			}
			time.Sleep(time.Second)
		}
	})

	t.Run("CommandThatCannotStartSaysWhy", func(t *testing.T) {
		out, err := cli(150*time.Second, "sandbox", "create", "--name", nobash, "--from", busyboxImage, "--timeout", "120s", "--detach", "--", "/bin/bash", "-l")
		if err == nil || !strings.Contains(out, "exec /bin/bash: no such file or directory") {
			t.Fatalf("create -- /bin/bash on busybox: %v, want the reason in the output:\n%s", err, out)
		}
		out, err = cli(30*time.Second, "sandbox", "get", nobash, "-o", "json")
		if err != nil || !strings.Contains(out, "exited with code 127: exec /bin/bash: no such file or directory") {
			t.Errorf("condition of the failed sandbox: %v\n%s", err, out)
		}
	})

	t.Run("RefusedCreateLeavesNoRecord", func(t *testing.T) {
		before := list()
		out, err := cli(60*time.Second, "sandbox", "create", "--name", "refused-"+suffix, "--from", busyboxImage, "--memory", "1", "--detach")
		if err == nil || !strings.Contains(out, "memory") {
			t.Fatalf("create --memory 1 was not refused with a reason: %v\n%s", err, out)
		}
		t.Logf("refused: %s", strings.TrimSpace(out))
		if after := list(); after != before {
			t.Errorf("sandbox list changed by a refused create: %q → %q", before, after)
		}
	})

	t.Run("CreateOnTerminalOpensShell", func(t *testing.T) {
		local := filepath.Join(t.TempDir(), "notes.txt")
		if err := os.WriteFile(local, []byte("uploaded-before-attach\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "sandbox", "create", "--name", attached, "--from", busyboxImage, "--timeout", "120s",
			"--upload", local+":/sandbox/notes.txt")
		cmd.Env = append(os.Environ(), "TERM=dumb")
		ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: 120, Rows: 40})
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				<-exited
			}
		})
		var seen bytes.Buffer
		lines := make(chan string, 256)
		go func() {
			r := bufio.NewReader(ptmx)
			for {
				b, err := r.ReadBytes('\n')
				if len(b) > 0 {
					lines <- string(b)
				}
				if err != nil {
					close(lines)
					return
				}
			}
		}()
		waitFor := func(want string, d time.Duration) {
			t.Helper()
			deadline := time.After(d)
			for {
				if strings.Contains(seen.String(), want) {
					return
				}
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("CLI output ended before %q:\n%s", want, seen.String())
					}
					seen.WriteString(l)
				case <-deadline:
					t.Fatalf("no %q within %v; output:\n%s", want, d, seen.String())
				}
			}
		}
		waitFor("opening a shell", 150*time.Second)
		// Typed into the terminal: runs in the sandbox's shell, where the upload is.
		if _, err := io.WriteString(ptmx, "echo in-sandbox-$((6*7)) $(cat /sandbox/notes.txt) $(hostname)\r"); err != nil {
			t.Fatal(err)
		}
		waitFor("in-sandbox-42 uploaded-before-attach", 60*time.Second)
		if _, err := io.WriteString(ptmx, "exit 3\r"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-exited:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Errorf("CLI exit after the shell's `exit 3`: %v, want exit code 3", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("CLI still running after the shell exited; output:\n%s", seen.String())
		}
		// Leaving the shell leaves the sandbox running.
		if out, err := cli(30*time.Second, "sandbox", "get", attached); err != nil || !strings.Contains(out, "READY") {
			t.Errorf("sandbox after leaving its shell: %v\n%s", err, out)
		}
	})
}
