package mainproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/supervisor/reaper"
)

// The test binary doubles as a small PID-1-like supervisor for the reaping test: it
// becomes a child subreaper and runs the central wait loop, which a normal test
// process must not (it would steal statuses from go test's own children).
func TestMain(m *testing.M) {
	if os.Getenv("MAINPROC_TEST_SUBREAPER") == "1" {
		os.Exit(subreaperHelper())
	}
	os.Exit(m.Run())
}

func subreaperHelper() int {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Println("prctl:", err)
		return 2
	}
	r := reaper.New(true)
	defer r.Close()
	// The main process leaves an orphan that exits later with its own status; the
	// reaper must report the main process's 5, not steal or confuse it with the 3.
	m, err := Start(r, Options{Argv: []string{"/bin/sh", "-c", "(sleep 0.3; exit 3) & exit 5"}, Env: os.Environ()})
	if err != nil {
		fmt.Println("start:", err)
		return 2
	}
	<-m.Done()
	fmt.Println("main-exit", m.ExitCode())
	// Another process started after the orphans must also get its own status.
	m2, err := Start(r, Options{Argv: []string{"/bin/sh", "-c", "exit 9"}, Env: os.Environ()})
	if err != nil {
		fmt.Println("start:", err)
		return 2
	}
	<-m2.Done()
	fmt.Println("second-exit", m2.ExitCode())
	time.Sleep(1500 * time.Millisecond)
	fmt.Println("zombies", countZombieChildren())
	return 0
}

func countZombieChildren() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := procstat.Read(pid); err == nil && st.State == 'Z' && st.PPID == os.Getpid() {
			n++
		}
	}
	return n
}

func TestReapsOrphansWithoutStealing(t *testing.T) {
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MAINPROC_TEST_SUBREAPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	for _, want := range []string{"main-exit 5", "second-exit 9", "zombies 0"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("helper output lacks %q:\n%s", want, out)
		}
	}
}

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(stream, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l = append(l.l, stream+": "+line)
}

func (l *lines) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.l...)
}

func TestArgvIsNotReparsed(t *testing.T) {
	r := reaper.New(false)
	defer r.Close()
	var got lines
	m, err := Start(r, Options{
		Argv:   []string{"printf", "%s|", "a  b", "$HOME", "; echo pwned", "`id`"},
		Env:    []string{"PATH=/usr/bin:/bin", "HOME=/nowhere"},
		Dir:    t.TempDir(),
		OnLine: got.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	<-m.Done()
	if m.ExitCode() != 0 {
		t.Fatalf("exit %d", m.ExitCode())
	}
	want := "stdout: a  b|$HOME|; echo pwned|`id`|"
	if l := got.get(); len(l) != 1 || l[0] != want {
		t.Fatalf("lines = %q, want [%q]", l, want)
	}
}

func TestExitCodesAndStderr(t *testing.T) {
	r := reaper.New(false)
	defer r.Close()
	var got lines
	m, err := Start(r, Options{Argv: []string{"/bin/sh", "-c", "echo oops >&2; exit 7"}, Env: os.Environ(), OnLine: got.add})
	if err != nil {
		t.Fatal(err)
	}
	<-m.Done()
	if m.ExitCode() != 7 {
		t.Fatalf("exit = %d, want 7", m.ExitCode())
	}
	if l := got.get(); len(l) != 1 || l[0] != "stderr: oops" {
		t.Fatalf("lines = %q", l)
	}

	m, err = Start(r, Options{Argv: []string{"sleep", "100"}, Env: os.Environ()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("sleep did not exit on SIGTERM")
	}
	if m.ExitCode() != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit = %d, want 143", m.ExitCode())
	}

	if _, err := Start(r, Options{Argv: []string{"no-such-binary-openshell"}, Env: []string{"PATH=/bin"}}); err == nil || !strings.Contains(err.Error(), "not found in PATH") {
		t.Fatalf("missing binary: err = %v", err)
	}
}

func TestBackgroundChildDoesNotHoldExit(t *testing.T) {
	r := reaper.New(false)
	defer r.Close()
	m, err := Start(r, Options{Argv: []string{"/bin/sh", "-c", "sleep 30 & echo started $!"}, Env: os.Environ()})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("exit not reported while a background child holds stdout")
	}
	replay, _, _ := m.Attach()
	if !strings.Contains(string(replay), "started") {
		t.Fatalf("replay = %q", replay)
	}
	// Stop the orphaned sleep by the pid the script printed.
	if f := strings.Fields(string(replay)); len(f) == 2 {
		if pid, err := strconv.Atoi(f[1]); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func TestPTYAttachReplayResize(t *testing.T) {
	r := reaper.New(false)
	defer r.Close()
	var got lines
	m, err := Start(r, Options{
		Argv: []string{"/bin/sh", "-c", "tty; stty size; echo ready; read x; stty size; echo got:$x; exit 3"},
		TTY:  true, Cols: 100, Rows: 30, Env: os.Environ(), OnLine: got.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	waitFor := func(sub string) {
		for !strings.Contains(strings.Join(got.get(), "\n"), sub) {
			if ctx.Err() != nil {
				t.Fatalf("no %q in output %q", sub, got.get())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("ready")
	replay, live, detach := m.Attach()
	defer detach()
	for _, want := range []string{"/dev/pts/", "30 100", "ready"} {
		if !strings.Contains(string(replay), want) {
			t.Fatalf("replay %q lacks %q", replay, want)
		}
	}
	if err := m.Resize(120, 40); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	var liveOut strings.Builder
	for chunk := range live {
		liveOut.Write(chunk)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("the live channel closed before Done: an attached client would take the end for a drop")
	}
	if m.ExitCode() != 3 {
		t.Fatalf("exit %d", m.ExitCode())
	}
	for _, want := range []string{"40 120", "got:hello"} {
		if !strings.Contains(liveOut.String(), want) {
			t.Fatalf("live output %q lacks %q", liveOut.String(), want)
		}
	}
	if _, err := m.Write([]byte("x")); err == nil {
		t.Fatal("write after exit succeeded")
	}
}

// An attached client learns how its live channel ended from Done: the process's end
// must be visible there by the time the channel closes, every time.
func TestLiveClosesAfterDone(t *testing.T) {
	r := reaper.New(false)
	defer r.Close()
	for i := range 40 {
		m, err := Start(r, Options{Argv: []string{"/bin/sh", "-c", "echo x; exit 4"}, Env: os.Environ()})
		if err != nil {
			t.Fatal(err)
		}
		_, live, detach := m.Attach()
		for range live {
		}
		select {
		case <-m.Done():
		default:
			t.Fatalf("run %d: the live channel closed before Done", i)
		}
		detach()
		if m.ExitCode() != 4 {
			t.Fatalf("run %d: exit %d, want 4", i, m.ExitCode())
		}
	}
}

func TestRunsAsOtherUserWhenRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	r := reaper.New(false)
	defer r.Close()
	var got lines
	m, err := Start(r, Options{Argv: []string{"id", "-u"}, Env: os.Environ(), Dir: "/",
		Cred: &syscall.Credential{Uid: 4321, Gid: 4321}, OnLine: got.add})
	if err != nil {
		t.Fatal(err)
	}
	<-m.Done()
	if l := got.get(); len(l) != 1 || l[0] != "stdout: 4321" {
		t.Fatalf("id -u printed %q", l)
	}
}

func TestRing(t *testing.T) {
	r := ring{size: 8}
	r.write([]byte("abc"))
	r.write([]byte("defgh"))
	r.write([]byte("ij"))
	if string(r.buf) != "cdefghij" {
		t.Fatalf("ring = %q", r.buf)
	}
	r.write([]byte("0123456789"))
	if string(r.buf) != "23456789" {
		t.Fatalf("ring = %q", r.buf)
	}
}

// A command that cannot start fails in Start with exec's reason and the path, which the
// supervisor passes on to the gateway, instead of starting and exiting 126/127.
func TestStartSaysWhyCommandCannotStart(t *testing.T) {
	r := reaper.New(false)
	defer r.Close()
	dir := t.TempDir()
	noexec := filepath.Join(dir, "script.sh")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, argv0, want string
		errno             error
	}{
		{"missing", "/no/such/bin/bash", "exec /no/such/bin/bash: no such file or directory", syscall.ENOENT},
		{"directory", dir, "exec " + dir + ": is a directory", syscall.EISDIR},
		{"not executable", noexec, "exec " + noexec + ": permission denied", syscall.EACCES},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(r, Options{Argv: []string{tc.argv0, "-l"}, Env: os.Environ()})
			var se *StartError
			if !errors.As(err, &se) || err.Error() != tc.want || !errors.Is(err, tc.errno) {
				t.Fatalf("err = %v, want %q (StartError wrapping %v)", err, tc.want, tc.errno)
			}
		})
	}
}

func TestDefaultArgvPicksTheImagesShell(t *testing.T) {
	has := func(paths ...string) func(string) bool {
		return func(p string) bool { return slices.Contains(paths, p) }
	}
	if got := DefaultArgv(has("/bin/bash", "/bin/sh")); !slices.Equal(got, []string{"/bin/bash", "-l"}) {
		t.Errorf("with bash: %v", got)
	}
	if got := DefaultArgv(has("/bin/sh")); !slices.Equal(got, []string{"/bin/sh", "-l"}) {
		t.Errorf("busybox-like image: %v", got)
	}
}
