package sshd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/openshell/openshell/supervisor/mainproc"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
	"github.com/openshell/openshell/supervisor/transfer"
)

const sftpHelperEnv = "OPENSHELL_SSHD_TEST_SFTP"

// The test binary doubles as the re-executed SFTP server (what "openshell-sandbox
// sftp-server" is in production) so that SFTP runs as the sandbox user when root.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == transfer.ServerArg { // the re-executed tar server
		os.Exit(transfer.Main(os.Args[2:]))
	}
	if os.Getenv(sftpHelperEnv) == "1" {
		if err := ServeSFTP(struct {
			io.Reader
			io.Writer
		}{os.Stdin, os.Stdout}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type fixture struct {
	client *ssh.Client
	user   *sandboxuser.User
	dir    string
	main   *mainproc.Main
	reaper *reaper.Reaper
}

// setup starts the real server on a Unix socket. As root, commands run as a separate
// unprivileged uid (4321) in a world-traversable directory, as in a sandbox; otherwise
// as the current user.
func setup(t *testing.T, withMain *mainproc.Options) *fixture {
	t.Helper()
	base, err := os.MkdirTemp("", "sshd-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(base, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	var user *sandboxuser.User
	var sftpArgv []string
	if os.Geteuid() == 0 {
		user = &sandboxuser.User{Name: "sbx", UID: 4321, GID: 4321, Home: work, Shell: "/bin/sh"}
		if err := os.Chown(work, 4321, 4321); err != nil {
			t.Fatal(err)
		}
		// The re-executed SFTP server must be executable by that uid.
		self, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(base, "sftp-helper")
		if err := os.WriteFile(bin, self, 0o755); err != nil {
			t.Fatal(err)
		}
		sftpArgv = []string{bin}
	} else {
		user = sandboxuser.Current(sandboxuser.DB{Root: "/"})
		user.Home = work
	}
	r := reaper.New(false)
	t.Cleanup(func() { r.Close() })
	f := &fixture{user: user, dir: work, reaper: r}
	env := append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", sftpHelperEnv + "=1"}, user.Env()...)
	if withMain != nil {
		withMain.Env = env
		withMain.Dir = work
		withMain.Cred = user.Credential()
		m, err := mainproc.Start(r, *withMain)
		if err != nil {
			t.Fatal(err)
		}
		f.main = m
		t.Cleanup(func() {
			_ = m.Signal(syscall.SIGKILL)
			<-m.Done()
		})
	}
	srv, err := New(Config{User: user, Env: env, Dir: work, Reaper: r, SFTPArgv: sftpArgv, Shell: "/bin/sh",
		Main: func() MainTarget {
			if f.main == nil {
				return nil
			}
			return f.main
		}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(base, "run", "ssh.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Dir(sock)); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode = %v, %v; want 0700", st.Mode(), err)
	}
	serveDone := make(chan error, 1)
	ctx, cancel := contextWithCancel(t)
	go func() { serveDone <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-serveDone; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var gotKey ssh.PublicKey
	sc, chans, reqs, err := ssh.NewClientConn(c, "sandbox", &ssh.ClientConfig{
		User: "sandbox",
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			gotKey = key
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if gotKey.Type() != ssh.KeyAlgoED25519 || !bytes.Equal(gotKey.Marshal(), srv.HostKey().Marshal()) {
		t.Fatalf("host key %s does not match the server's ed25519 key", gotKey.Type())
	}
	f.client = ssh.NewClient(sc, chans, reqs)
	t.Cleanup(func() { f.client.Close() })
	return f
}

func TestExecOutputsExitCodeEnvStdin(t *testing.T) {
	f := setup(t, nil)
	sess, err := f.client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Setenv("GREETING", "hi there"); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	sess.Stdin = strings.NewReader("line from stdin\n")
	err = sess.Run(`read l; echo "$GREETING|$l|$(pwd)|$(id -u)|$HOME"; echo to-stderr >&2; exit 3`)
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
		t.Fatalf("Run err = %v, want exit 3", err)
	}
	want := fmt.Sprintf("hi there|line from stdin|%s|%d|%s\n", f.dir, f.user.UID, f.dir)
	if stdout.String() != want || stderr.String() != "to-stderr\n" {
		t.Fatalf("stdout %q stderr %q, want %q", stdout.String(), stderr.String(), want)
	}

	// Success and a large output: nothing lost between exit and channel close.
	sess2, _ := f.client.NewSession()
	out, err := sess2.Output("head -c 3000000 /dev/zero | tr '\\0' x")
	if err != nil || len(out) != 3000000 {
		t.Fatalf("big output: %d bytes, err %v", len(out), err)
	}
}

func TestExecSignalAndHangup(t *testing.T) {
	f := setup(t, nil)
	sess, _ := f.client.NewSession()
	if err := sess.Start("sleep 100"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := sess.Signal(ssh.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := sess.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.Signal() != "TERM" || ee.ExitStatus() != 143 {
		t.Fatalf("Wait err = %v, want TERM/143", err)
	}

	// A background child holding stdout must not hold the exit.
	sess2, _ := f.client.NewSession()
	start := time.Now()
	out, err := sess2.Output("sleep 30 & echo bg $!")
	if err != nil || !strings.HasPrefix(string(out), "bg ") {
		t.Fatalf("Output = %q, %v", out, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("exit took %v with a background child", d)
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(string(out), "bg "))); err == nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func TestPTYShellResize(t *testing.T) {
	f := setup(t, nil)
	sess, _ := f.client.NewSession()
	if err := sess.RequestPty("xterm-256color", 30, 100, ssh.TerminalModes{ssh.ECHO: 0}); err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe()
	var out syncBuffer
	sess.Stdout = &out
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	waitOut := func(sub string) {
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), sub) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in %q", sub, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	fmt.Fprintf(stdin, "echo T=$TERM; tty; stty size\n")
	waitOut("30 100")
	waitOut("T=xterm-256color")
	waitOut("/dev/pts/")
	if err := sess.WindowChange(50, 132); err != nil {
		t.Fatal(err)
	}
	// window-change carries no reply and is handled beside the channel's data, so a
	// line typed right after it may still see the old size: ask until the new one
	// shows (or the deadline passes).
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "50 132"); time.Sleep(300 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no \"50 132\" after the window change in %q", out.String())
		}
		fmt.Fprintf(stdin, "stty size\n")
	}
	fmt.Fprintf(stdin, "exit 4\n")
	err := sess.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 4 {
		t.Fatalf("Wait = %v, want exit 4", err)
	}
}

func TestSFTPAsSandboxUser(t *testing.T) {
	f := setup(t, nil)
	c, err := sftp.NewClient(f.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.MkdirAll("sub/dir"); err != nil {
		t.Fatal(err)
	}
	w, err := c.Create("sub/dir/file.bin")
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("openshell"), 200000)
	if _, err := w.Write(payload); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := c.Chmod("sub/dir/file.bin", 0o640); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(f.dir, "sub", "dir", "file.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(payload)) || st.Mode().Perm() != 0o640 {
		t.Fatalf("file size %d mode %v", st.Size(), st.Mode())
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; uid != f.user.UID {
		t.Fatalf("file owned by uid %d, want the sandbox user %d", uid, f.user.UID)
	}
	r, err := c.Open(filepath.Join(f.dir, "sub/dir/file.bin"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read back %d bytes, err %v", len(got), err)
	}
	if os.Geteuid() == 0 {
		// The sandbox user cannot write where it has no permission.
		if _, err := c.Create("/root/openshell-sftp-denied"); err == nil {
			os.Remove("/root/openshell-sftp-denied")
			t.Fatal("sftp as the sandbox user could write into /root")
		}
	}
}

func TestAttachMainProcess(t *testing.T) {
	f := setup(t, &mainproc.Options{
		Argv: []string{"/bin/sh", "-c", "echo hello-main; read x; echo got:$x; exit 6"},
		TTY:  true,
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		replay, _, detach := f.main.Attach()
		detach()
		if strings.Contains(string(replay), "hello-main") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("main process printed nothing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	sess, _ := f.client.NewSession()
	stdin, _ := sess.StdinPipe()
	var out syncBuffer
	sess.Stdout = &out
	if err := sess.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	if err := sess.Start(MainName); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "hello-main") {
		if time.Now().After(deadline) {
			t.Fatalf("no replay: %q", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(stdin, "yo\n")
	err := sess.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 6 {
		t.Fatalf("Wait = %v, want the main process's exit 6", err)
	}
	if !strings.Contains(out.String(), "got:yo") {
		t.Fatalf("output %q", out.String())
	}
}

func TestDirectTCPIPLoopbackOnly(t *testing.T) {
	f := setup(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	c, err := f.client.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	if _, err := f.client.Dial("tcp", "192.0.2.1:80"); err == nil {
		t.Fatal("forward to a non-loopback address was allowed")
	}
}
