package peercred

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestMain doubles as a dialing child process: a second process of the same user.
func TestMain(m *testing.M) {
	if path := os.Getenv("PEERCRED_TEST_DIAL"); path != "" {
		c, err := net.Dial("unix", path)
		if err != nil {
			fmt.Println("dial-error", err)
			os.Exit(0)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Println("closed")
		} else {
			fmt.Print("got ", line)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serve(t *testing.T, l net.Listener) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "hello")
			c.Close()
		}
	}()
}

func TestSocketModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub")
	path := filepath.Join(dir, "driver.sock")
	l, err := Listen(path, Policy{UID: os.Getuid(), PID: os.Getpid()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	st, _ := os.Stat(dir)
	if st.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %v, want 0700", st.Mode().Perm())
	}
	st, _ = os.Lstat(path)
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want 0600 socket", st.Mode())
	}
	// A stale socket is replaced, a regular file is refused.
	l.Close()
	l2, err := Listen(path, Policy{UID: os.Getuid()}, nil)
	if err != nil {
		t.Fatalf("relisten over stale socket: %v", err)
	}
	l2.Close()
	os.Remove(path)
	os.WriteFile(path, nil, 0o600)
	if _, err := Listen(path, Policy{UID: os.Getuid()}, nil); err == nil {
		t.Fatal("listened over a regular file")
	}
}

func TestExpectedPeerAllowedOthersRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	l, err := Listen(path, Policy{UID: os.Getuid(), PID: os.Getpid()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	serve(t, l)

	// This process is the expected peer.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || line != "hello\n" {
		t.Fatalf("expected peer: %q %v", line, err)
	}

	// A child process of the same user is not.
	exe, _ := os.Executable()
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "PEERCRED_TEST_DIAL="+path)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if string(out) != "closed\n" {
		t.Fatalf("child of the same user got %q, want the connection closed", out)
	}
}

func TestAnyPIDOfSameUser(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	l, err := Listen(path, Policy{UID: os.Getuid()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	serve(t, l)
	exe, _ := os.Executable()
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "PEERCRED_TEST_DIAL="+path)
	out, err := cmd.Output()
	if err != nil || string(out) != "got hello\n" {
		t.Fatalf("child with PID=0 policy: %q %v", out, err)
	}
}

func TestWrongUIDRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	l, err := Listen(path, Policy{UID: os.Getuid() + 12345}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	serve(t, l)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
		t.Fatal("peer with another uid was served")
	}
}

func TestWaitExit(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- WaitExit(t.Context(), cmd.Process.Pid) }()
	select {
	case err := <-done:
		t.Fatalf("WaitExit returned %v while the process runs", err)
	case <-time.After(700 * time.Millisecond):
	}
	cmd.Process.Kill()
	cmd.Wait()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitExit after exit: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitExit did not notice the exit")
	}
	if err := WaitExit(t.Context(), cmd.Process.Pid); err != nil {
		t.Fatalf("WaitExit on a gone pid: %v", err)
	}
}

// TestPeerIsTheDialer: the credentials read on the accepted side are the dialing
// process's own (the kernel's record, per platform).
func TestPeerIsTheDialer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	l, err := Listen(path, Policy{UID: os.Getuid()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := Peer(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Cred{UID: os.Getuid(), PID: os.Getpid()}); got != want {
		t.Fatalf("Peer = %+v, want %+v", got, want)
	}
}
