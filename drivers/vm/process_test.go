package vm_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/grpcdriver"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/internal/procstat"
)

// envDial makes the test binary a second client process: it dials the driver socket
// and prints "ok" when Capabilities answers, "refused" otherwise.
const envDial = "OPENSHELL_VM_TEST_DIAL"

func dialChild(sock string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("refused:", err)
		return 0
	}
	defer conn.Close()
	if _, err := grpcdriver.NewClient(conn).Capabilities(ctx); err != nil {
		fmt.Println("refused")
		return 0
	}
	fmt.Println("ok")
	return 0
}

// driverProc is a real openshell-driver-vm process.
type driverProc struct {
	cmd    *exec.Cmd
	sock   string
	stderr *os.File
}

func startDriver(t *testing.T, stateDir, gatewayAddr string, extra ...string) *driverProc {
	t.Helper()
	guestBin, image := vmFixture(t)
	sock := filepath.Join(stateDir, "run", "driver.sock")
	logf, err := os.OpenFile(filepath.Join(stateDir, "driver.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{
		"--bind-socket", sock, "--expected-peer-pid", strconv.Itoa(os.Getpid()),
		"--state-dir", stateDir, "--gateway-endpoint", gatewayAddr,
		"--default-image", image, "--supervisor-binary", guestBin,
		"--cpus", "1", "--memory-mib", "256", "--disk-size", "64Mi",
		"--image-cache-dir", filepath.Join(fixtureDir, "images"),
	}, extra...)
	cmd := exec.Command(fixture.driverBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &driverProc{cmd: cmd, sock: sock, stderr: logf}
	t.Cleanup(func() {
		p.kill()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("driver log:\n%s", b)
		}
	})
	return p
}

func (p *driverProc) kill() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

func (p *driverProc) client(t *testing.T) *grpcdriver.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := grpcdriver.Dial(ctx, p.sock)
	if err != nil {
		t.Fatalf("dial driver: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Capabilities(ctx); err != nil {
		t.Fatalf("Capabilities: %v", err)
	}
	return c
}

// TestDriverProcessPeerCheck: the expected peer (this process) is served; a second
// process of the same user is refused; the socket is 0600 in a 0700 directory.
func TestDriverProcessPeerCheck(t *testing.T) {
	vmFixture(t)
	dir := shortDir(t)
	p := startDriver(t, dir, "127.0.0.1:1")
	c := p.client(t)
	caps, err := c.Capabilities(t.Context())
	if err != nil || caps.GetDriverName() != "vm" {
		t.Fatalf("Capabilities = %v, %v", caps, err)
	}
	st, _ := os.Stat(filepath.Dir(p.sock))
	if st.Mode().Perm() != 0o700 {
		t.Errorf("socket dir mode %v", st.Mode().Perm())
	}
	st, _ = os.Lstat(p.sock)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v", st.Mode().Perm())
	}
	exe, _ := os.Executable()
	child := exec.CommandContext(t.Context(), exe, "-test.run=^$")
	child.Env = append(os.Environ(), envDial+"="+p.sock)
	out, err := child.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if strings.TrimSpace(string(out)) != "refused" {
		t.Errorf("second process of the same user got %q, want refused", out)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "driver.log"))
	if !strings.Contains(string(b), "refusing connection") {
		t.Errorf("driver log has no refusal line:\n%s", b)
	}
	if ports := tcpListeners(p.cmd.Process.Pid); len(ports) > 0 {
		t.Errorf("driver listens on TCP %v without --allow-unauthenticated-tcp", ports)
	}
}

// TestDriverTCPOnlyWithFlag: with the flag the contract is served on TCP.
func TestDriverTCPOnlyWithFlag(t *testing.T) {
	vmFixture(t)
	dir := shortDir(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	p := startDriver(t, dir, "127.0.0.1:1", "--allow-unauthenticated-tcp", "--bind-address", addr)
	p.client(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := grpcdriver.NewClient(conn).Capabilities(ctx); err != nil {
		t.Fatalf("Capabilities over TCP with the flag: %v", err)
	}
	if len(tcpListeners(p.cmd.Process.Pid)) != 1 {
		t.Errorf("want exactly one TCP listener, got %v", tcpListeners(p.cmd.Process.Pid))
	}
	b, _ := os.ReadFile(filepath.Join(dir, "driver.log"))
	if !strings.Contains(string(b), "WITHOUT ANY AUTHENTICATION") {
		t.Errorf("no loud warning in the driver log")
	}
	// Without --bind-address the flag is refused.
	out, err := exec.Command(fixture.driverBin, "--allow-unauthenticated-tcp", "--state-dir", dir, "--gateway-endpoint", "127.0.0.1:1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--bind-address") {
		t.Errorf("flag without address: %v %s", err, out)
	}
}

// tcpListeners lists the local addresses of TCP sockets in LISTEN state owned by pid.
func tcpListeners(pid int) []string {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(b)
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) > 9 && fl[3] == "0A" && inodes[fl[9]] {
				out = append(out, fl[1])
			}
		}
		b.Close()
	}
	return out
}

// TestRunnerSurvivesDriverKill: kill -9 of the driver process leaves the VM running;
// a new driver process re-adopts it (same runner and QEMU, no reboot), repoints it to
// the new gateway address, and the guest's gateway session works through it.
func TestRunnerSurvivesDriverKill(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	p1 := startDriver(t, dir, gw.addr())
	c1 := p1.client(t)
	id := create(t, c1, image)
	first := gw.next(t, id, vmTimeout)
	waitFor(t, c1, id, "Ready", ready)
	rec := record(t, dir, id)
	if !state.SameProcess(rec.RunnerPID, rec.RunnerStart) || !state.SameProcess(rec.VMMPID, rec.VMMStart) {
		t.Fatalf("runner/qemu not running: %+v", rec)
	}
	if st, _ := procstat.Read(rec.RunnerPID); st == nil || st.Session != rec.RunnerPID {
		t.Errorf("runner is not a session leader: %+v", st)
	}

	p1.cmd.Process.Signal(syscall.SIGKILL)
	p1.cmd.Wait()
	time.Sleep(500 * time.Millisecond)
	if !state.SameProcess(rec.RunnerPID, rec.RunnerStart) || !state.SameProcess(rec.VMMPID, rec.VMMStart) {
		t.Fatalf("killing the driver took the VM down")
	}

	// The restarted gateway listens elsewhere: the adopted runner is repointed.
	gw2 := newGatewayStub(t)
	p2 := startDriver(t, dir, gw2.addr())
	c2 := p2.client(t)
	list, err := c2.List(t.Context())
	if err != nil || len(list) != 1 || list[0].GetId() != id {
		t.Fatalf("List after restart = %v, %v", list, err)
	}
	waitFor(t, c2, id, "Ready after re-adoption", ready)
	rec2 := record(t, dir, id)
	if rec2.RunnerPID != rec.RunnerPID || rec2.VMMPID != rec.VMMPID {
		t.Errorf("re-adoption changed processes: runner %d→%d qemu %d→%d", rec.RunnerPID, rec2.RunnerPID, rec.VMMPID, rec2.VMMPID)
	}
	// The session path still works: close the guest's gateway connection; it reconnects
	// from the same boot.
	gw.mu.Lock()
	for _, c := range gw.conns[id] {
		c.Close()
	}
	gw.mu.Unlock()
	again := gw2.next(t, id, vmTimeout)
	if again.BootID != first.BootID || again.Conn < 2 {
		t.Errorf("after re-adoption: boot %q conn %d; want the same boot %q and a reconnect", again.BootID, again.Conn, first.BootID)
	}

	// A guest-initiated power-off is reported as VMExited.
	gw2.send(t, id, "poweroff")
	waitFor(t, c2, id, "VMExited after guest power-off", func(sb *computev1.DriverSandbox) bool {
		return drivers.FindCondition(sb.GetStatus(), drivers.ConditionReady).GetReason() == "VMExited"
	})
	if deleted, err := c2.Delete(t.Context(), id, ""); err != nil || !deleted {
		t.Fatalf("Delete = %v, %v", deleted, err)
	}
	assertNoLeftovers(t, dir, rec, nil)
}

// TestConformanceOverSocket runs the conformance suite against a real driver process
// through the gRPC adapter, as the gateway uses it.
func TestConformanceOverSocket(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs")
	}
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	p := startDriver(t, dir, gw.addr())
	drivertest.Suite(t, func(t *testing.T) drivers.Driver { return p.client(t) }, drivertest.Options{Image: image, ReadyTimeout: vmTimeout})
}

// TestDriverExitsWithItsPeer: when the gateway (expected peer) dies, even by kill -9,
// the driver process exits and releases the state dir; the VMs are untouched.
func TestDriverExitsWithItsPeer(t *testing.T) {
	vmFixture(t)
	dir := shortDir(t)
	peer := exec.Command("sleep", "300")
	if err := peer.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { peer.Process.Kill(); peer.Wait() }()
	cmd := exec.Command(fixture.driverBin, "--bind-socket", filepath.Join(dir, "d.sock"), "--expected-peer-pid", strconv.Itoa(peer.Process.Pid),
		"--state-dir", dir, "--gateway-endpoint", "127.0.0.1:1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("driver exited while its peer lives: %v", err)
	case <-time.After(2 * time.Second):
	}
	peer.Process.Kill()
	peer.Wait()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("driver exit status after its peer died: %v", err)
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("driver still running 15s after its peer died")
	}
}
