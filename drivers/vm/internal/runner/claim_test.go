package runner

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/internal/procstat"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

func goodClaim(id string) *Claim {
	return &Claim{SandboxID: id, SandboxName: "n-" + id, Bootstrap: bootstrap.Config{SandboxID: id, Token: "tok-" + id}}
}

// TestClaimOnce: the control socket takes one valid claim; a second one is refused
// with 409 naming why, a bad one with 400 naming the field, and a runner whose VM is
// not pooled refuses any.
func TestClaimOnce(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	box := newClaimBox()
	srv := &http.Server{Handler: (&control{box: newStatusBox(Status{State: StatePooled}), stop: func() {}, kill: func() {}, claim: box.take}).handler()}
	go srv.Serve(l)
	defer srv.Close()
	c := NewClient(sock)

	bad := goodClaim("sb-1")
	bad.Bootstrap.Token = ""
	if err := c.Claim(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "bootstrap.token") || !strings.Contains(err.Error(), "HTTP 400") {
		t.Fatalf("claim without token: %v", err)
	}
	bad = goodClaim("sb-1")
	bad.Bootstrap.SandboxID = "other"
	if err := c.Claim(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "bootstrap.sandbox_id") {
		t.Fatalf("claim with mismatched ids: %v", err)
	}
	if err := c.Claim(t.Context(), goodClaim("../x")); err == nil || !strings.Contains(err.Error(), "sandbox_id") {
		t.Fatalf("claim with a path as id: %v", err)
	}
	if err := c.Claim(t.Context(), goodClaim("sb-1")); err != nil {
		t.Fatalf("first claim: %v", err)
	}
	select {
	case got := <-box.ch:
		if got.SandboxID != "sb-1" || got.Bootstrap.Token != "tok-sb-1" {
			t.Fatalf("delivered claim %+v", got)
		}
	default:
		t.Fatal("the claim was not delivered")
	}
	if err := c.Claim(t.Context(), goodClaim("sb-2")); err == nil || !strings.Contains(err.Error(), "HTTP 409") || !strings.Contains(err.Error(), "already claimed") {
		t.Fatalf("second claim: %v", err)
	}
	select {
	case got := <-box.ch:
		t.Fatalf("a second claim reached the runner: %+v", got)
	default:
	}

	sock2 := filepath.Join(t.TempDir(), "ctl2.sock")
	l2, _ := net.Listen("unix", sock2)
	srv2 := &http.Server{Handler: (&control{box: newStatusBox(Status{State: StateRunning}), stop: func() {}, kill: func() {}}).handler()}
	go srv2.Serve(l2)
	defer srv2.Close()
	if err := NewClient(sock2).Claim(t.Context(), goodClaim("sb-3")); err == nil || !strings.Contains(err.Error(), "not a pooled one") {
		t.Fatalf("claim of a runner that is not pooled: %v", err)
	}
}

// TestClaimApply: after a claim the spec is the sandbox's and no longer names a pool.
func TestClaimApply(t *testing.T) {
	s := &Spec{SandboxID: "pool-a-1", Pool: "a", GatewayAddr: "127.0.0.1:1"}
	cl := goodClaim("sb-9")
	cl.GatewaySocketDir = "/run/x"
	cl.Egress.RunnerCredential = "cred"
	cl.apply(s)
	if s.SandboxID != "sb-9" || s.SandboxName != "n-sb-9" || s.Pool != "" || s.Bootstrap.Token != "tok-sb-9" ||
		s.Egress.RunnerCredential != "cred" || s.GatewaySocket() != "/run/x/"+filepath.Base(s.GatewaySocket()) {
		t.Fatalf("spec after claim: %+v", s)
	}
}

// TestHoldingListenerServesAfterClaim runs the bootstrap handshake through a holding
// listener as a pooled VM does: the guest's connection is taken at once (waiting
// reported) and gets nothing until the document is served, which it then receives
// whole on that same connection.
func TestHoldingListenerServesAfterClaim(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	hl := newHoldingListener(l, func() { close(waiting) })
	defer hl.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-waiting:
	case <-time.After(5 * time.Second):
		t.Fatal("the guest's connection was not reported as waiting")
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("the guest read %d bytes before any claim (err %v)", n, err)
	}
	c.SetReadDeadline(time.Time{})

	doc := []byte(`{"sandbox_id":"sb-1","token":"t"}`)
	box := newStatusBox(Status{State: StateBooting})
	done := make(chan struct{})
	go func() {
		serveBootstrapOnce(hl, append([]byte(nil), doc...), box, slog.New(slog.DiscardHandler))
		close(done)
	}()
	got := make([]byte, len(doc))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(doc) {
		t.Fatalf("document %q, %v", got, err)
	}
	io.WriteString(c, wire.BootstrapAck)
	end := make([]byte, len(wire.BootstrapDone))
	if _, err := io.ReadFull(c, end); err != nil || string(end) != wire.BootstrapDone {
		t.Fatalf("end %q, %v", end, err)
	}
	<-done
	if st, _ := box.get(); st.State != StateRunning || st.Bootstrap != 1 {
		t.Fatalf("status after serving: %+v", st)
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("the bootstrap port still accepts after the document was served")
	}
}

// FuzzClaimDecode: whatever arrives on POST /claim, Validate never accepts a claim
// without a usable id and token.
func FuzzClaimDecode(f *testing.F) {
	f.Add([]byte(`{"sandbox_id":"a","bootstrap":{"sandbox_id":"a","token":"t"}}`))
	f.Add([]byte(`{"sandbox_id":"..","bootstrap":{"sandbox_id":"..","token":"t"},"gateway_socket_dir":"rel"}`))
	f.Add([]byte(`{"egress":{"allow_cidrs":["nope"]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Claim
		if json.Unmarshal(b, &c) != nil {
			return
		}
		if c.Validate() == nil && (c.Bootstrap.Token == "" || c.SandboxID == "" || c.SandboxID != c.Bootstrap.SandboxID ||
			strings.ContainsAny(c.SandboxID, "/") || c.SandboxID == ".." || (c.GatewaySocketDir != "" && !filepath.IsAbs(c.GatewaySocketDir))) {
			t.Fatalf("Validate accepted %+v", c)
		}
	})
}

// TestClaimedTimeline: a VM booted for its sandbox reports the guest's boot steps
// with the bootstrap; a claimed pool VM reports the bootstrap only (its boot was the
// pool's, before this create), so its create timeline is claim → bootstrap → ready.
func TestClaimedTimeline(t *testing.T) {
	for _, tc := range []struct {
		name    string
		claimed bool
		want    []string
	}{
		{"booted for the sandbox", false, []string{"vmm", "firmware", "kernel", "bootstrap"}},
		{"claimed from a pool", true, []string{"bootstrap"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, sock := unixListener(t)
			st := Status{State: StateBooting}
			st.stamp("vmm")
			if tc.claimed {
				// What the runner's main loop does on a claim.
				st.State, st.ClaimedAt, st.Timeline = StateBooting, time.Now().UTC(), nil
			}
			box := newStatusBox(st)
			done := make(chan struct{})
			go func() {
				serveBootstrapOnce(l, []byte(`{"sandbox_id":"sb"}`), box, slog.New(slog.DiscardHandler))
				close(done)
			}()
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, len(`{"sandbox_id":"sb"}`))); err != nil {
				t.Fatal(err)
			}
			ack, err := wire.AppendTimelineAck(nil, wire.GuestTimeline{NowNs: 9e8, Steps: []wire.GuestStep{{Phase: "kernel", Ns: 5e8}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(ack); err != nil {
				t.Fatal(err)
			}
			if b, _ := io.ReadAll(c); !strings.HasPrefix(string(b), wire.BootstrapDone) || len(b) != len(wire.BootstrapDone)+wire.HostClockLen {
				t.Fatalf("after the acknowledgement: %q", b)
			}
			<-done
			got, _ := box.get()
			var phases []string
			for _, s := range got.Timeline {
				phases = append(phases, s.Phase)
			}
			if strings.Join(phases, ",") != strings.Join(tc.want, ",") || got.State != StateRunning {
				t.Fatalf("timeline %v (state %s), want %v", phases, got.State, tc.want)
			}
		})
	}
}

// TestSessionNice: a pooled VM's runner lowers the priority of every thread of every
// process in its session but its own (a Go child has several threads), and the claim
// restores all of them. The session here is a re-executed
// test binary (a multi-threaded Go process, as the runner is) that starts a child.
func TestSessionNice(t *testing.T) {
	if os.Getenv("RUNNER_NICE_HELPER") == "1" {
		// Lead a session with a child in it; wait until stdin closes.
		child := exec.Command("sleep", "600")
		if err := child.Start(); err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString(strconv.Itoa(child.Process.Pid) + "\n")
		io.Copy(io.Discard, os.Stdin)
		child.Process.Kill()
		os.Exit(0)
	}
	testenv.RequireRoot(t) // restoring a lowered priority needs CAP_SYS_NICE
	cmd := exec.Command(os.Args[0], "-test.run=^TestSessionNice$")
	cmd.Env = append(os.Environ(), "RUNNER_NICE_HELPER=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	var childPID int
	if _, err := fmt.Fscan(out, &childPID); err != nil {
		t.Fatalf("helper did not start its child: %v", err)
	}
	sid := cmd.Process.Pid
	start, err := state.ProcStartTime(sid)
	if err != nil {
		t.Fatal(err)
	}
	// nices reads the nice value of every thread of pid.
	nices := func(pid int) []int {
		tids, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for _, e := range tids {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, e.Name()))
			if err != nil {
				continue
			}
			st, err := procstat.Parse(b)
			if err != nil {
				t.Fatalf("thread %s of pid %d: %v", e.Name(), pid, err)
			}
			out = append(out, st.Nice)
		}
		return out
	}
	check := func(want int) {
		t.Helper()
		for _, pid := range []int{sid, childPID} {
			ns := nices(pid)
			if pid == sid && len(ns) < 2 {
				t.Fatalf("the helper has %d threads; the test needs a multi-threaded leader", len(ns))
			}
			for _, n := range ns {
				if n != want {
					t.Fatalf("pid %d threads' nice %v, want all %d", pid, ns, want)
				}
			}
		}
	}
	check(0)
	if err := setSessionNice(sid, start, refillNice, 0); err != nil {
		t.Fatal(err)
	}
	check(refillNice)
	if err := setSessionNice(sid, start, 0, 0); err != nil {
		t.Fatal(err)
	}
	check(0)
	// The runner (the session's leader) keeps its priority.
	if err := setSessionNice(sid, start, refillNice, sid); err != nil {
		t.Fatal(err)
	}
	if ns := nices(sid); slices.Contains(ns, refillNice) {
		t.Fatalf("the excepted leader was reniced: %v", ns)
	}
	if ns := nices(childPID); slices.ContainsFunc(ns, func(n int) bool { return n != refillNice }) {
		t.Fatalf("the session's other process was not reniced: %v", ns)
	}
	if err := setSessionNice(sid, start, 0, 0); err != nil {
		t.Fatal(err)
	}
	check(0)
	// Not a session leader (a runner inside a test binary): nothing is changed.
	if err := setPoolNice(refillNice, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if ns := nices(os.Getpid()); slices.ContainsFunc(ns, func(n int) bool { return n == refillNice }) {
		t.Fatalf("setPoolNice changed a process that does not lead its session: %v", ns)
	}
	if err := setVMMNice(refillNice, childPID); err != nil {
		t.Fatal(err)
	}
	check(0)
	if _, ok := procstat.AutogroupNice(sid); !ok {
		t.Log("this kernel has no autogroups: the scheduling group's nice is not checked")
		return
	}
	// The helper leads its session, so it has a scheduling group of its own; this
	// test's group is another.
	ours, _ := procstat.AutogroupNice(os.Getpid())
	for _, want := range []int{refillNice, 0} {
		if err := setAutogroupNice(sid, want, 0); err != nil {
			t.Fatal(err)
		}
		if got, _ := procstat.AutogroupNice(sid); got != want {
			t.Fatalf("the helper's scheduling group has nice %d, want %d", got, want)
		}
		if got, _ := procstat.AutogroupNice(os.Getpid()); got != ours {
			t.Fatalf("the test's own scheduling group went from nice %d to %d", ours, got)
		}
	}
	// The control plane's group goes above its VMs' (a lower nice: CAP_SYS_NICE).
	switch err := PrioritizeControlPlane(sid); {
	case err != nil && mayRestoreNice():
		t.Fatalf("PrioritizeControlPlane with CAP_SYS_NICE: %v", err)
	case err != nil:
		t.Logf("no CAP_SYS_NICE here: %v", err)
	default:
		if got, _ := procstat.AutogroupNice(sid); got != ControlPlaneNice {
			t.Fatalf("the control plane's group has nice %d, want %d", got, ControlPlaneNice)
		}
		if got, _ := procstat.AutogroupNice(os.Getpid()); got != ours {
			t.Fatalf("the test's own scheduling group went from nice %d to %d", ours, got)
		}
	}
	if err := setAutogroupNice(os.Getpid()+1<<22, 0, time.Second); err != nil {
		t.Errorf("a pid that does not exist: %v (want nothing done)", err)
	}
}

// A runner lowers a pooled VM's priority only when it can raise it again at the claim:
// root may; the same root without CAP_SYS_NICE and with an RLIMIT_NICE of 0 (a
// container's default) may not, and would otherwise leave claimed VMs niced.
func TestMayRestoreNice(t *testing.T) {
	if os.Getenv("OPENSHELL_TEST_MAY_RESTORE_NICE") == "1" {
		fmt.Printf("may-restore=%v\n", mayRestoreNice())
		return
	}
	testenv.RequireRoot(t)
	if !mayRestoreNice() {
		t.Fatal("root with CAP_SYS_NICE: mayRestoreNice = false")
	}
	setpriv := testenv.RequireCommand(t, "setpriv", "apt-get install util-linux")
	prlimit := testenv.RequireCommand(t, "prlimit", "apt-get install util-linux")
	for _, c := range []struct {
		name string
		argv []string
		want string
	}{
		{"no CAP_SYS_NICE, RLIMIT_NICE 0", []string{prlimit, "--nice=0:0", setpriv, "--bounding-set=-sys_nice"}, "may-restore=false"},
		{"CAP_SYS_NICE, RLIMIT_NICE 0", []string{prlimit, "--nice=0:0"}, "may-restore=true"},
	} {
		argv := append(c.argv, os.Args[0], "-test.run", "^TestMayRestoreNice$")
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "OPENSHELL_TEST_MAY_RESTORE_NICE=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("%s: child said %q; want %s", c.name, out, c.want)
		}
	}
}
