//go:build linux && (amd64 || arm64)

package confine

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
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

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/testenv"
)

// proc is a started process and its exit code once it is reaped.
type proc struct {
	cmd  *exec.Cmd
	code int
	done chan struct{}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// testSpares keeps spares that are this test binary routed to TestHelperExecMain
// (the binary is not the supervisor).
func testSpares(t *testing.T) *Spares[*proc] {
	t.Helper()
	exe, _ := os.Executable()
	var startedMu sync.Mutex
	var started []*proc
	s := &Spares[*proc]{Self: exe, Timeout: 20 * time.Second,
		Start: func(c *exec.Cmd) (*proc, error) {
			if c.Args[1] != Subcommand || c.Args[2] != WaitFlag {
				return nil, fmt.Errorf("not a spare: %q", c.Args)
			}
			c.Args = append([]string{exe, "-test.run=^TestHelperExecMain$", "--"}, c.Args[1:]...)
			c.Env = []string{"CONFINE_EXECMAIN=1"}
			if err := c.Start(); err != nil {
				return nil, err
			}
			p := &proc{cmd: c, done: make(chan struct{})}
			startedMu.Lock()
			started = append(started, p)
			startedMu.Unlock()
			go func() {
				_ = c.Wait()
				p.code = c.ProcessState.ExitCode()
				close(p.done)
			}()
			return p, nil
		},
		Kill: func(p *proc) { _ = p.cmd.Process.Kill() },
	}
	t.Cleanup(func() {
		s.Close()
		// A spare being started when Close came is started still: wait for it, so
		// that every spare and program ends with the test.
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			s.mu.Lock()
			filling := s.filling
			s.mu.Unlock()
			if !filling {
				break
			}
		}
		startedMu.Lock()
		defer startedMu.Unlock()
		for _, p := range started {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return s
}

// idleSpare fills s and waits until its spare is there.
func idleSpare(t *testing.T, s *Spares[*proc]) *proc {
	t.Helper()
	s.Fill()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		var h *held[*proc]
		if len(s.idle) > 0 {
			h = s.idle[0]
		}
		s.mu.Unlock()
		if h != nil {
			return h.proc
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no spare after 20 s")
	return nil
}

// agentCmd is a command as the supervisor's launcher receives it: the agent's
// argv, environment, directory, stdio and a session of its own.
func agentCmd(argv []string, env []string, dir string) *exec.Cmd {
	return &exec.Cmd{Path: argv[0], Args: argv, Env: env, Dir: dir,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
}

func waitExit(t *testing.T, p *proc) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(20 * time.Second):
	}
	t.Fatalf("pid %d did not exit", p.pid())
	return -1
}

// TestSpareExecsConfined runs a command through a spare and checks it is confined
// as by the one-shot helper (TestCommandExecsConfined), with exactly the
// environment, directory, stdio and session it was given.
func TestSpareExecsConfined(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "sh", "apt-get install dash")
	dir := setupTree(t)
	s := testSpares(t)
	spare := idleSpare(t, s)

	spec := Spec{UID: nobody, GID: nobody, ReadOnly: []string{"/usr", "/bin", "/lib", "/lib64", "/etc", "/proc"},
		ReadWrite: []string{filepath.Join(dir, "rw"), "/dev/null"}}
	script := fmt.Sprintf(`id -u; grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd|CapPrm|CapAmb):' /proc/self/status
echo hi > %[1]s/rw/ok && echo rw-ok; echo x > %[1]s/outside/f || echo outside-refused
echo "pwd=$(pwd)"; echo "env=$(env | grep -v '^PWD=' | grep -v '^SHLVL=' | grep -v '^_=' | sort | tr '\n' ' ')"
echo "sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$"
echo "sockets=$(ls -l /proc/$$/fd | grep -c socket:)"
read line; echo "stdin=$line"; echo to-stderr >&2; exit 7`, dir)
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	errR, errW, _ := os.Pipe()
	cmd := agentCmd([]string{"sh", "-c", script}, []string{"PATH=/usr/bin:/bin", "FOO=bar baz"}, filepath.Join(dir, "rw"))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	p, ok, err := s.Run(spec, cmd)
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil || !ok {
		t.Fatalf("Run: ok=%v err=%v", ok, err)
	}
	if p != spare {
		t.Fatalf("Run used pid %d, not the idle spare %d", p.pid(), spare.pid())
	}
	fmt.Fprintln(inW, "hello")
	inW.Close()
	out, _ := io.ReadAll(outR)
	stderr, _ := io.ReadAll(errR)
	if code := waitExit(t, p); code != 7 {
		t.Fatalf("exit %d, want 7\n%s\n%s", code, out, stderr)
	}
	got := string(out)
	pid := p.pid()
	for _, want := range []string{"65534\n", "NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000",
		"CapPrm:\t0000000000000000", "CapAmb:\t0000000000000000", "rw-ok", "outside-refused", "Permission denied",
		"pwd=" + filepath.Join(dir, "rw") + "\n", "env=FOO=bar baz PATH=/usr/bin:/bin \n",
		fmt.Sprintf("sid=%d pid=%d\n", pid, pid), "sockets=0\n", "stdin=hello\n"} {
		if !strings.Contains(got+string(stderr), want) {
			t.Errorf("output lacks %q:\n%s\nstderr: %s", want, got, stderr)
		}
	}
	if !strings.HasSuffix(string(stderr), "to-stderr\n") {
		t.Errorf("stderr = %q", stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "outside", "f")); err == nil {
		t.Error("confined agent wrote outside read_write")
	}
	// The next spare is on its way.
	if next := idleSpare(t, s); next == spare {
		t.Error("no new spare after the first was used")
	}
}

// TestSpareWaitsWithoutBoundingSet: a waiting spare has already emptied the
// bounding set of its exec thread and still holds root's effective capabilities
// (it must still switch identity), without being confined yet.
func TestSpareWaitsWithoutBoundingSet(t *testing.T) {
	testenv.RequireRoot(t)
	s := testSpares(t)
	spare := idleSpare(t, s)
	var emptied, threads int
	var leader map[string]string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && emptied == 0; time.Sleep(10 * time.Millisecond) {
		tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", spare.pid()))
		if err != nil {
			t.Fatal(err)
		}
		threads = len(tids)
		for _, tid := range tids {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", spare.pid(), tid.Name()))
			if err != nil {
				continue
			}
			st := map[string]string{}
			for _, l := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(l, ":"); ok {
					st[k] = strings.TrimSpace(v)
				}
			}
			if st["CapBnd"] == "0000000000000000" {
				emptied++
			}
			if tid.Name() == strconv.Itoa(spare.pid()) {
				leader = st
			}
		}
	}
	t.Logf("waiting spare: %d threads, VmRSS %s", threads, leader["VmRSS"])
	if emptied != 1 {
		t.Errorf("waiting spare: %d of %d threads with an empty bounding set, want 1 (its exec thread)", emptied, threads)
	}
	if leader["CapEff"] == "0000000000000000" || leader["Uid"] != "0\t0\t0\t0" || leader["NoNewPrivs"] != "0" {
		t.Errorf("waiting spare: CapEff %s Uid %q NoNewPrivs %s; want root's effective set, not yet confined", leader["CapEff"], leader["Uid"], leader["NoNewPrivs"])
	}
}

// TestSpareTTY: a PTY program gets its terminal as the controlling one, as
// Setctty gives it.
func TestSpareTTY(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "sh", "apt-get install dash")
	s := testSpares(t)
	idleSpare(t, s)
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	spec := Spec{UID: nobody, GID: nobody, NoLandlock: true}
	cmd := agentCmd([]string{"sh", "-c", `echo "tty=$(readlink /proc/$$/fd/0) ctty=$(cut -d' ' -f7 /proc/$$/stat)"; stty size`},
		[]string{"PATH=/usr/bin:/bin"}, "/")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr.Setctty = true
	_ = pty.Setsize(master, &pty.Winsize{Rows: 33, Cols: 111})
	p, ok, err := s.Run(spec, cmd)
	slave.Close()
	if err != nil || !ok {
		t.Fatalf("Run: ok=%v err=%v", ok, err)
	}
	out, _ := io.ReadAll(master) // EIO once the program is gone
	if code := waitExit(t, p); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	got := string(out)
	if !strings.Contains(got, "tty=/dev/pts/") || strings.Contains(got, "ctty=0 ") || !strings.Contains(got, "33 111") {
		t.Errorf("no controlling terminal or size: %q", got)
	}
}

// TestSpareGoneFallsBack: a spare that died while idle is noticed at the hand-over,
// nothing runs, and the caller is told to start the program the one-shot way.
func TestSpareGoneFallsBack(t *testing.T) {
	testenv.RequireRoot(t)
	s := testSpares(t)
	spare := idleSpare(t, s)
	_ = spare.cmd.Process.Kill()
	waitExit(t, spare)
	dir := t.TempDir()
	cmd := agentCmd([]string{"/bin/touch", filepath.Join(dir, "ran")}, []string{"PATH=/usr/bin:/bin"}, "/")
	_, ok, err := s.Run(Spec{UID: nobody, GID: nobody, NoLandlock: true}, cmd)
	if ok || err != nil {
		t.Fatalf("Run on a dead spare: ok=%v err=%v, want false, nil", ok, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
		t.Fatal("the program ran on a dead spare")
	}
	if next := idleSpare(t, s); next == spare {
		t.Fatal("no new spare after the dead one")
	}
}

// TestSpareRefusesBadCommand: a directory that does not exist fails the start as
// fork's chdir would, and the spare is gone; a command a spare cannot reproduce
// (a process group of its own) is left to the one-shot helper.
func TestSpareRefusesBadCommand(t *testing.T) {
	testenv.RequireRoot(t)
	s := testSpares(t)
	spare := idleSpare(t, s)
	cmd := agentCmd([]string{"/bin/true"}, nil, "/nonexistent/dir")
	_, ok, err := s.Run(Spec{UID: nobody, GID: nobody, NoLandlock: true}, cmd)
	if !ok || err == nil || !strings.Contains(err.Error(), "chdir /nonexistent/dir") {
		t.Fatalf("Run with a missing dir: ok=%v err=%v", ok, err)
	}
	if code := waitExit(t, spare); code == 0 {
		t.Fatalf("the refused spare exited %d", code)
	}
	idleSpare(t, s)
	cmd = agentCmd([]string{"/bin/true"}, nil, "/")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if _, ok, _ := s.Run(Spec{UID: nobody, GID: nobody, NoLandlock: true}, cmd); ok {
		t.Fatal("a spare took a command it cannot start as asked")
	}
	// A bad spec is left to the one-shot path, which refuses it before any start.
	cmd = agentCmd([]string{"/bin/true"}, nil, "/")
	if _, ok, _ := s.Run(Spec{UID: nobody, GID: nobody, ReadOnly: []string{"relative"}}, cmd); ok {
		t.Fatal("a spec that fails Validate was handed over")
	}
}

// TestSparesKeep: with Keep 2 two spares wait; a program takes the older one and
// none is started for it while one still waits (SetKeep 1); the next program takes
// that one and a new spare follows.
func TestSparesKeep(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "sh", "apt-get install dash")
	s := testSpares(t)
	s.Keep = 2
	s.Fill()
	var idle []*proc
	for deadline := time.Now().Add(40 * time.Second); len(idle) < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d spares after 40 s, want 2", len(idle))
		}
		s.mu.Lock()
		idle = idle[:0]
		for _, h := range s.idle {
			idle = append(idle, h.proc)
		}
		s.mu.Unlock()
	}
	if idle[0] == idle[1] {
		t.Fatal("the same spare is kept twice")
	}
	s.SetKeep(1)
	spec := Spec{UID: nobody, GID: nobody, ReadOnly: []string{"/usr", "/bin", "/lib", "/lib64", "/etc", "/proc"}, ReadWrite: []string{"/dev/null"}}
	run := func() *proc {
		t.Helper()
		p, ok, err := s.Run(spec, agentCmd([]string{"sh", "-c", "exit 3"}, []string{"PATH=/usr/bin:/bin"}, "/"))
		if err != nil || !ok {
			t.Fatalf("Run: ok=%v err=%v", ok, err)
		}
		if code := waitExit(t, p); code != 3 {
			t.Fatalf("exit %d, want 3", code)
		}
		return p
	}
	if p := run(); p != idle[0] {
		t.Fatalf("the first program ran on pid %d, not the older spare %d", p.pid(), idle[0].pid())
	}
	time.Sleep(200 * time.Millisecond)
	s.mu.Lock()
	n, filling := len(s.idle), s.filling
	s.mu.Unlock()
	if n != 1 || filling {
		t.Fatalf("after one program with Keep 1: %d idle, filling %v; want the other spare alone", n, filling)
	}
	if p := run(); p != idle[1] {
		t.Fatalf("the second program ran on pid %d, not the kept spare %d", p.pid(), idle[1].pid())
	}
	if next := idleSpare(t, s); next == idle[0] || next == idle[1] {
		t.Error("no new spare once none was left")
	}
}

// TestSpareClose: an idle spare exits once the supervisor lets it go.
func TestSpareClose(t *testing.T) {
	testenv.RequireRoot(t)
	s := testSpares(t)
	spare := idleSpare(t, s)
	s.Close()
	if code := waitExit(t, spare); code != 126 {
		t.Errorf("closed spare exited %d, want 126", code)
	}
	s.Fill()
	time.Sleep(50 * time.Millisecond)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.idle) != 0 || s.filling {
		t.Error("a closed Spares started another spare")
	}
}

// TestHelperSpareProbe is the agent of TestSpareUnreachableFromAgent: run confined
// through a spare, it looks for the next spare (root, waiting) and tries to use it.
func TestHelperSpareProbe(t *testing.T) {
	if os.Getenv("SPARE_PROBE") == "" {
		t.Skip("helper process only")
	}
	p := probe{"uid": strconv.Itoa(os.Getuid())}
	var spare int
	for deadline := time.Now().Add(20 * time.Second); spare == 0 && time.Now().Before(deadline); {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err == nil && bytes.Contains(b, []byte(Subcommand+"\x00"+WaitFlag+"\x00")) {
				spare = pid
				break
			}
		}
		if spare == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	p["spare_found"] = strconv.FormatBool(spare != 0)
	if spare != 0 {
		if st, err := os.Stat(fmt.Sprintf("/proc/%d", spare)); err == nil {
			p["spare_uid"] = fmt.Sprint(st.Sys().(*syscall.Stat_t).Uid)
		}
		p["kill"] = errName(unix.Kill(spare, 0))
		p["sigstop"] = errName(unix.Kill(spare, unix.SIGSTOP))
		p["ptrace"] = errName(unix.PtraceAttach(spare))
		_, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", spare))
		p["list_fds"] = errName(err)
		_, err = os.Open(fmt.Sprintf("/proc/%d/fd/3", spare))
		p["open_socket"] = errName(err)
		_, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", spare))
		p["environ"] = errName(err)
		_, err = os.Open(fmt.Sprintf("/proc/%d/mem", spare))
		p["mem"] = errName(err)
		// Any process may hold a pidfd; taking a descriptor through it needs the
		// ptrace access the agent lacks (and the filter refuses the call).
		if pfd, err := unix.PidfdOpen(spare, 0); err == nil {
			_, err = unix.PidfdGetfd(pfd, 3, 0)
			p["pidfd_getfd"] = errName(err)
			unix.Close(pfd)
		} else {
			p["pidfd_getfd"] = "pidfd_open " + errName(err)
		}
	}
	// Nothing of a spare came along: this process holds no socket.
	ents, _ := os.ReadDir("/proc/self/fd")
	sockets := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			sockets++
		}
	}
	p["own_sockets"] = strconv.Itoa(sockets)
	json.NewEncoder(os.Stdout).Encode(p)
}

// TestSpareUnreachableFromAgent: the agent, run through a spare and confined, finds
// the next spare (so the attempts prove something) and can neither signal, trace
// nor look into it, nor does it hold a socket of its own to reach one.
func TestSpareUnreachableFromAgent(t *testing.T) {
	testenv.RequireRoot(t)
	dir := setupTree(t)
	// The agent runs this test binary: a copy it may execute.
	exe, _ := os.Executable()
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "ro", "probe")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	s := testSpares(t)
	idleSpare(t, s)
	spec := Spec{UID: nobody, GID: nobody, LandlockHard: true,
		ReadOnly: []string{"/proc", "/usr", "/lib", "/lib64", "/etc", filepath.Join(dir, "ro")}, ReadWrite: []string{"/dev/null"}}
	outR, outW, _ := os.Pipe()
	cmd := agentCmd([]string{bin, "-test.run=^TestHelperSpareProbe$"}, []string{"SPARE_PROBE=1"}, "/")
	cmd.Stdout, cmd.Stderr = outW, outW
	p, ok, err := s.Run(spec, cmd)
	outW.Close()
	if err != nil || !ok {
		t.Fatalf("Run: ok=%v err=%v", ok, err)
	}
	out, _ := io.ReadAll(outR)
	waitExit(t, p)
	var got probe
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "{") {
			if err := json.Unmarshal([]byte(l), &got); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got == nil {
		t.Fatalf("the probe printed nothing:\n%s", out)
	}
	t.Logf("agent vs spare: %v", got)
	want := probe{"uid": "65534", "spare_found": "true", "spare_uid": "0", "kill": "EPERM", "sigstop": "EPERM", "ptrace": "EPERM",
		"list_fds": "EACCES", "open_socket": "EACCES", "environ": "EACCES", "mem": "EACCES", "pidfd_getfd": "EPERM", "own_sockets": "0"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	// The spare still serves the supervisor afterwards (the agent did not stop it).
	done := idleSpare(t, s)
	c := agentCmd([]string{"/bin/true"}, []string{"PATH=/usr/bin:/bin"}, "/")
	if p, ok, err := s.Run(Spec{UID: nobody, GID: nobody, NoLandlock: true}, c); err != nil || !ok || p != done || waitExit(t, p) != 0 {
		t.Errorf("the spare after the probe: ok=%v err=%v", ok, err)
	}
}

// FuzzSpareRequest: whatever arrives on a spare's socket is refused with an error
// or decoded into a request that validate checks; never a panic.
func FuzzSpareRequest(f *testing.F) {
	req := &request{Spec: Spec{UID: 1000, GID: 1000, ReadOnly: []string{"/usr"}}, Argv: []string{"sh", "-c", "true"},
		Env: []string{"PATH=/bin"}, Dir: "/sandbox", Ctty: true, Stdio: [3]bool{true, true, false}}
	head, body, _ := encodeRequest(req)
	f.Add(append(head, body...), 2)
	f.Add(append(head, body[:10]...), 2)
	f.Add(binary.BigEndian.AppendUint32(nil, maxRequest+1), 0)
	f.Add(append(binary.BigEndian.AppendUint32(nil, 4), "null"...), 0)
	f.Add(append(binary.BigEndian.AppendUint32(nil, 13), `{"argv":[""]}`...), 0)
	f.Fuzz(func(t *testing.T, b []byte, nfds int) {
		r, err := decodeRequest(bytes.NewReader(b))
		if err != nil {
			if r != nil {
				t.Fatal("a request with an error")
			}
			return
		}
		if err := r.validate(nfds); err == nil {
			if len(r.Argv) == 0 || r.Argv[0] == "" || r.Spec.UID <= 0 || r.Spec.GID <= 0 {
				t.Fatalf("validate passed %+v", r)
			}
			n := 0
			for _, s := range r.Stdio {
				if s {
					n++
				}
			}
			if n != nfds {
				t.Fatalf("validate passed %d fds for %v", nfds, r.Stdio)
			}
		}
	})
}

func TestSpareRequestRoundTrip(t *testing.T) {
	req := &request{Spec: Spec{UID: 1000, GID: 1000}, Argv: []string{"a", "b c"}, Env: []string{"X=1"}, Dir: "/d", Stdio: [3]bool{false, true, true}}
	head, body, err := encodeRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeRequest(bytes.NewReader(append(head, body...)))
	if err != nil || got.validate(2) != nil || got.Argv[1] != "b c" || got.Dir != "/d" || got.Stdio != req.Stdio {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	if err := got.validate(3); err == nil {
		t.Error("3 descriptors for 2 streams accepted")
	}
	if _, err := decodeRequest(bytes.NewReader(append(head, body[:len(body)-1]...))); err == nil {
		t.Error("a cut request decoded")
	}
	if _, err := decodeRequest(bytes.NewReader(append(binary.BigEndian.AppendUint32(nil, 9), `{"x":1}  `...))); err == nil {
		t.Error("an unknown field decoded")
	}
}

// runOnSpare runs `sh -c script` confined by spec on s's idle spare and returns its
// exit code and output (stdout and stderr).
func runOnSpare(t *testing.T, s *Spares[*proc], spec Spec, script string) (int, string) {
	t.Helper()
	want := idleSpare(t, s)
	outR, outW, _ := os.Pipe()
	cmd := agentCmd([]string{"sh", "-c", script}, []string{"PATH=/usr/bin:/bin"}, "/")
	cmd.Stdout, cmd.Stderr = outW, outW
	p, ok, err := s.Run(spec, cmd)
	outW.Close()
	if err != nil || !ok {
		t.Fatalf("Run: ok=%v err=%v", ok, err)
	}
	if p != want {
		t.Fatalf("Run used pid %d, not the idle spare %d", p.pid(), want.pid())
	}
	out, _ := io.ReadAll(outR)
	outR.Close()
	return waitExit(t, p), string(out)
}

// TestSparePreparesLandlock: a spare started after a command builds that command's
// Landlock ruleset while it waits; a command with that spec is confined by it, and
// one with another spec (the policy changed) by its own spec, never by the
// prepared one.
func TestSparePreparesLandlock(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "sh", "apt-get install dash")
	testenv.RequireCommand(t, "bash", "apt-get install bash")
	if abi, _ := CheckLandlock(false); abi == 0 {
		t.Skip("the kernel enforces no Landlock")
	}
	dir := setupTree(t)
	s := testSpares(t)
	sys := []string{"/usr", "/bin", "/lib", "/lib64", "/etc", "/proc"}
	later := filepath.Join(dir, "later")
	specA := Spec{UID: nobody, GID: nobody, ReadOnly: sys, ReadWrite: []string{filepath.Join(dir, "rw"), later, "/dev/null"}}

	// The first spare started before any command: it has nothing to prepare.
	first := idleSpare(t, s)
	if slices.Contains(first.cmd.Args, SpecFlag) {
		t.Fatalf("first spare %q prepares a spec nobody gave", first.cmd.Args)
	}
	if code, out := runOnSpare(t, s, specA, "true"); code != 0 {
		t.Fatalf("true on the first spare: exit %d: %s", code, out)
	}
	prepared := idleSpare(t, s)
	if !slices.Contains(prepared.cmd.Args, SpecFlag) {
		t.Fatalf("the spare after a command %q does not prepare its spec", prepared.cmd.Args)
	}
	waitPrepared(t, prepared)
	// Made after the spare built its ruleset: the prepared rules cannot hold it
	// (a ruleset holds the files its paths named when it was built), which shows
	// the command below was confined by the prepared ruleset.
	if err := os.Mkdir(later, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(later, 0o777)
	// The ruleset is the filesystem's only: the network is the proxy's to police,
	// and a prepared ruleset must not refuse a TCP connection either.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	script := fmt.Sprintf(`echo hi > %[1]s/rw/a && echo rw-ok; echo x > %[1]s/outside/f || echo outside-refused
echo x > %[1]s/later/f || echo later-refused; cat %[1]s/outside/secret || echo read-refused
grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/self/status; id -u; echo "gid=$(id -g) groups=$(id -G)"
bash -c 'exec 3<>/dev/tcp/%[2]s && echo tcp-ok'`, dir, strings.Replace(l.Addr().String(), ":", "/", 1))
	code, out := runOnSpare(t, s, specA, script)
	for _, want := range []string{"rw-ok", "outside-refused", "later-refused", "read-refused", "NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "65534\n", "gid=65534 groups=65534\n", "tcp-ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("prepared spare: output lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "outside", "f")); err == nil {
		t.Error("a command on a prepared spare wrote outside read_write")
	}

	// The policy changes: rw becomes read-only and later writable. The idle spare
	// prepared specA; the command must get specB.
	specB := Spec{UID: nobody, GID: nobody, ReadOnly: append(slices.Clone(sys), filepath.Join(dir, "rw")), ReadWrite: []string{later, "/dev/null"}}
	if p := idleSpare(t, s); !slices.Contains(p.cmd.Args, SpecFlag) {
		t.Fatalf("spare %q does not prepare", p.cmd.Args)
	}
	code, out = runOnSpare(t, s, specB, fmt.Sprintf(`echo y > %[1]s/rw/b || echo rw-now-refused; echo y > %[1]s/later/g && echo later-ok; cat %[1]s/rw/a`, dir))
	for _, want := range []string{"rw-now-refused", "later-ok", "hi\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("spare prepared for another spec: output lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "rw", "b")); err == nil {
		t.Error("a command confined by a new spec wrote where only the prepared (old) spec allowed")
	}
}

// waitPrepared waits until spare p has done what it does before it waits for its
// command: its exec thread's bounding set, emptied last, is empty.
func waitPrepared(t *testing.T, p *proc) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		tids, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid()))
		for _, tid := range tids {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", p.pid(), tid.Name()))
			if strings.Contains(string(b), "CapBnd:\t0000000000000000") {
				return
			}
		}
	}
	t.Fatalf("spare %d did not get ready in 20 s", p.pid())
}

// TestSpareBadPreparedSpec: a spare whose spec to prepare is not a spec prepares
// nothing and still confines its command by the request's spec.
func TestSpareBadPreparedSpec(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "sh", "apt-get install dash")
	dir := setupTree(t)
	s := testSpares(t)
	bad := Spec{UID: 0, GID: 0} // refused by Validate: nothing is prepared for it
	s.mu.Lock()
	s.spec = &bad
	s.mu.Unlock()
	spec := Spec{UID: nobody, GID: nobody, ReadOnly: []string{"/usr", "/bin", "/lib", "/lib64", "/etc", "/proc"}, ReadWrite: []string{filepath.Join(dir, "rw"), "/dev/null"}}
	code, out := runOnSpare(t, s, spec, fmt.Sprintf(`id -u; echo x > %[1]s/outside/f || echo outside-refused; echo ok > %[1]s/rw/f && echo rw-ok`, dir))
	for _, want := range []string{"65534\n", "outside-refused", "rw-ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q (exit %d):\n%s", want, code, out)
		}
	}
}

// TestSpareSpecTooBigForThePipe: a spec larger than the pipe's buffer (written in
// whole before the spare starts, with nobody reading yet) gives a spare that
// prepares nothing, at once, rather than a start that waits forever.
func TestSpareSpecTooBigForThePipe(t *testing.T) {
	big := Spec{UID: nobody, GID: nobody}
	for i := 0; len(big.ReadOnly)*64 < 256<<10; i++ {
		big.ReadOnly = append(big.ReadOnly, fmt.Sprintf("/srv/a-rather-long-directory-name-to-fill-the-pipe/%08d", i))
	}
	type started struct {
		cmd *exec.Cmd
		sp  *Spare
		err error
	}
	done := make(chan started, 1)
	go func() {
		cmd, sp, err := SpareCommand("/bin/true", &big)
		done <- started{cmd, sp, err}
	}()
	select {
	case st := <-done:
		if st.err != nil {
			t.Fatalf("SpareCommand: %v", st.err)
		}
		defer st.sp.Close()
		defer st.sp.Started()
		if slices.Contains(st.cmd.Args, SpecFlag) {
			t.Fatalf("a spare was given a spec that does not fit its pipe: %q", st.cmd.Args)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SpareCommand still writing a spec larger than the pipe after 5 s")
	}
	// One that fits is still prepared.
	cmd, sp, err := SpareCommand("/bin/true", &Spec{UID: nobody, GID: nobody, ReadOnly: []string{"/usr"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	defer sp.Started()
	if !slices.Contains(cmd.Args, SpecFlag) {
		t.Fatalf("a small spec is not prepared: %q", cmd.Args)
	}
}
