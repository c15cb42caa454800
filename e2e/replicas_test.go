package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/peerv1"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/replica"
	"github.com/openshell/openshell/gateway/secrets"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/store/postgres"
	"github.com/openshell/openshell/gateway/store/postgres/pgtest"
)

// serviceStandIn stands in for the Kubernetes Service in front of the gateway
// replicas: a TCP forwarder that sends each new connection to the current backend.
// Switching the backend does not touch connections already made (a Service does not
// either); a backend that dies ends them.
type serviceStandIn struct {
	lis     net.Listener
	backend atomic.Value // string
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
}

func newServiceStandIn(t *testing.T, backend string) *serviceStandIn {
	t.Helper()
	// On every interface: the sandboxes reach it through the bridge's gateway IP.
	lis, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &serviceStandIn{lis: lis, conns: map[net.Conn]struct{}{}}
	f.backend.Store(backend)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() { defer f.wg.Done(); f.pipe(c) }()
		}
	}()
	t.Cleanup(f.close)
	return f
}

func (f *serviceStandIn) port() int { return f.lis.Addr().(*net.TCPAddr).Port }

func (f *serviceStandIn) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *serviceStandIn) pipe(c net.Conn) {
	b, err := net.DialTimeout("tcp", f.backend.Load().(string), 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !f.track(c, b) {
		c.Close()
		b.Close()
		return
	}
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) { _, _ = io.Copy(dst, src); dst.Close(); src.Close(); done <- struct{}{} }
	go cp(b, c)
	go cp(c, b)
	<-done
	<-done
	f.mu.Lock()
	if f.conns != nil {
		delete(f.conns, c)
		delete(f.conns, b)
	}
	f.mu.Unlock()
}

func (f *serviceStandIn) close() {
	f.lis.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// replicaProc is one openshell-gateway process of the replica set.
type replicaProc struct {
	id, state  string
	port, peer int
	cmd        *exec.Cmd
	logf       *os.File
	waited     chan struct{}
}

func startReplica(t *testing.T, bin, root, id, dsn string, fwdPort int) *replicaProc {
	t.Helper()
	r := &replicaProc{id: id, state: filepath.Join(root, id), port: freePort(t), peer: freePort(t), waited: make(chan struct{})}
	if err := os.MkdirAll(r.state, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(root, id+".toml")
	// The supervisors dial the Service stand-in, not a replica (explicit endpoint:
	// TCP with mTLS, as in a cluster).
	toml := fmt.Sprintf("[drivers.docker]\ngateway_endpoint = \"https://%s:%d\"\n", pki.SandboxHostName, fwdPort)
	if err := os.WriteFile(conf, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.logf, err = os.Create(filepath.Join(root, id+".log")); err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(filepath.Join(bin, "openshell-gateway"),
		"--config", conf, "--drivers", "docker", "--port", strconv.Itoa(r.port), "--state-dir", r.state,
		"--database-url", dsn, "--socket", "none", "--replica-id", id,
		"--peer-address", "127.0.0.1:"+strconv.Itoa(r.peer))
	r.cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "HOME="+root)
	r.cmd.Stdout, r.cmd.Stderr = r.logf, r.logf
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.waited) }()
	t.Cleanup(func() {
		r.stop()
		r.logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(r.logf.Name())
			t.Logf("replica %s log:\n%s", id, tail(string(b), 60))
		}
	})
	// Serving once it logs so (the port is bound early, before the driver is up).
	deadline := time.Now().Add(90 * time.Second)
	for {
		if b, _ := os.ReadFile(r.logf.Name()); bytes.Contains(b, []byte("gateway listening")) {
			break
		}
		select {
		case <-r.waited:
			b, _ := os.ReadFile(r.logf.Name())
			t.Fatalf("replica %s exited at start:\n%s", id, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(r.logf.Name())
			t.Fatalf("replica %s not serving after 90 s:\n%s", id, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return r
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop ends the process gracefully (SIGTERM, then SIGKILL) by its pid.
func (r *replicaProc) stop() {
	select {
	case <-r.waited:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.waited:
	case <-time.After(20 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.waited
	}
}

// TestReplicasOnePostgres: two real gateway processes on one real PostgreSQL behave
// as one gateway. Sandboxes (real supervisors in Docker containers) reach replica A
// through the Service stand-in; replica B creates one of them and waits for it to be
// READY, reports them READY, execs into them and deletes them. Then A is killed with
// SIGKILL: once A's lease ends B stops reporting A's sessions; the stand-in then sends
// new connections to B, the supervisor reconnects, and through B the sandbox is READY
// and exec'able again. A caller that is not a replica is refused by the peer service.
func TestReplicasOnePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e builds the binaries and drives a real compute driver; not in -short")
	}
	if driver() != "docker" {
		t.Skip("the replica test runs the docker driver (E2E_DRIVER unset or docker)")
	}
	requireDriver(t)
	dsn := pgtest.DSN(t)
	bin := build(t)
	root, err := os.MkdirTemp(tmpRoot, "rep")
	if err != nil {
		t.Fatal(err)
	}

	fwd := newServiceStandIn(t, "127.0.0.1:1") // backend set once A listens
	a := startReplica(t, bin, root, "a", dsn, fwd.port())
	fwd.backend.Store("127.0.0.1:" + strconv.Itoa(a.port))
	// The replicas share the PKI, token key, gateway id and secrets key (in a cluster:
	// one Secret mounted into every pod).
	if err := os.MkdirAll(filepath.Join(root, "b"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"pki", "sandbox-token.key", "gateway-id", secrets.KeyFile} {
		if out, err := exec.Command("cp", "-a", filepath.Join(a.state, f), filepath.Join(root, "b")+"/").CombinedOutput(); err != nil {
			t.Fatalf("copy %s to replica b: %v %s", f, err, out)
		}
	}
	b := startReplica(t, bin, root, "b", dsn, fwd.port())

	bundle, err := pki.Ensure(filepath.Join(a.state, "pki"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The CLI: one registration per replica, both with the user's client certificate.
	home := filepath.Join(root, "home")
	env := append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, "config"), "XDG_STATE_HOME="+filepath.Join(home, "s"),
		"PATH="+bin+":"+os.Getenv("PATH"))
	for _, r := range []*replicaProc{a, b} {
		dir := filepath.Join(home, "config", "openshell", "gateways", r.id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "endpoint"), []byte("https://127.0.0.1:"+strconv.Itoa(r.port)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteClientDir(bundle, dir); err != nil {
			t.Fatal(err)
		}
	}
	cli := func(ctx context.Context, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "openshell"), args...)
		cmd.Env = env
		cmd.WaitDelay = 5 * time.Second
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	mustCLI := func(t *testing.T, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		out, err := cli(ctx, args...)
		if err != nil {
			t.Fatalf("openshell %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	api := func(r *replicaProc) openshellv1.OpenShellClient {
		cc, err := grpc.NewClient("passthrough:///127.0.0.1:"+strconv.Itoa(r.port), grpc.WithTransportCredentials(credentials.NewTLS(bundle.ClientTLSConfig())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return openshellv1.NewOpenShellClient(cc)
	}
	apiB := api(b)
	st, err := postgres.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	holderOf := func(name string) (store.SessionHolder, error) {
		resp, err := apiB.GetSandbox(t.Context(), &openshellv1.GetSandboxRequest{Name: name})
		if err != nil {
			return store.SessionHolder{}, err
		}
		return st.GetSession(t.Context(), resp.GetSandbox().GetMetadata().GetId())
	}
	phaseOn := func(c openshellv1.OpenShellClient, name string) openshellv1.SandboxPhase {
		resp, err := c.GetSandbox(t.Context(), &openshellv1.GetSandboxRequest{Name: name})
		if err != nil {
			return openshellv1.SandboxPhase_SANDBOX_PHASE_UNSPECIFIED
		}
		return resp.GetSandbox().GetStatus().GetPhase()
	}
	ready := openshellv1.SandboxPhase_SANDBOX_PHASE_READY
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, _ = cli(ctx, "-g", "b", "sandbox", "delete", "--all")
	})

	s1, s2 := uniqueName("rep1"), uniqueName("rep2")
	// s2 is created through b while its supervisor reaches a: b's create waits on b's
	// watch, which must hear of a session that came up on a.
	for _, c := range []struct{ n, via string }{{s1, "a"}, {s2, "b"}} {
		n, via := c.n, c.via
		start := time.Now()
		mustCLI(t, "-g", via, "sandbox", "create", "--name", n, "--from", testImage(), "--timeout", "120s")
		t.Logf("create through %s → READY in %s", via, time.Since(start).Round(10*time.Millisecond))
	}
	for _, n := range []string{s1, s2} {
		h, err := holderOf(n)
		if err != nil || h.ReplicaID != "a" {
			t.Fatalf("sandbox %s: session record %+v, %v; want held by replica a (its supervisor came through the stand-in to a)", n, h, err)
		}
	}

	t.Run("ThroughB", func(t *testing.T) {
		// b learns of a's sessions from the store within a second or two.
		start := time.Now()
		for p := phaseOn(apiB, s1); p != ready; p = phaseOn(apiB, s1) {
			if time.Since(start) > 10*time.Second {
				t.Fatalf("through replica b, %s (session on a) is %v after 10 s, want READY", s1, p)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("READY through b %s after the check began", time.Since(start).Round(10*time.Millisecond))
		out := mustCLI(t, "-g", "b", "sandbox", "exec", s1, "--", "sh", "-c", "echo via-b-$((6*7))")
		if !strings.Contains(out, "via-b-42") {
			t.Fatalf("exec through b: %q", out)
		}
		// Transfers through b ride the same peer relay (4 MiB file in a small tree).
		src := filepath.Join(t.TempDir(), "tree")
		writeTree(t, src, 4<<20)
		mustCLI(t, "-g", "b", "sandbox", "upload", s1, src, "/tmp/up")
		if out := mustCLI(t, "-g", "b", "sandbox", "exec", s1, "--", "sha256sum", "/tmp/up/big/blob.bin"); !strings.HasPrefix(out, fileSum(t, filepath.Join(src, "big", "blob.bin"))) {
			t.Fatalf("checksum in the sandbox after an upload through b: %q", out)
		}
		dst := t.TempDir()
		mustCLI(t, "-g", "b", "sandbox", "download", s1, "/tmp/up", dst)
		if got, want := treeDigest(t, filepath.Join(dst, "up")), treeDigest(t, src); got != want {
			t.Fatalf("tree downloaded through b differs:\n%s\nwant:\n%s", got, want)
		}
		mustCLI(t, "-g", "b", "sandbox", "delete", s1)
		deadline := time.Now().Add(60 * time.Second)
		for {
			_, err := apiB.GetSandbox(t.Context(), &openshellv1.GetSandboxRequest{Name: s1})
			if status.Code(err) == codes.NotFound {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still there 60 s after delete through b: %v", s1, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=openshell.ai/sandbox-name="+s1).Output(); strings.TrimSpace(string(out)) != "" {
			t.Errorf("container of %s left after delete through b: %s", s1, out)
		}
	})

	t.Run("ForgedPeerRefused", func(t *testing.T) {
		// The user's certificate is valid for the API, not for the peer service.
		cc, err := grpc.NewClient("passthrough:///127.0.0.1:"+strconv.Itoa(b.peer), grpc.WithTransportCredentials(credentials.NewTLS(bundle.ClientTLSConfig())))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		s, err := peerv1.NewPeerClient(cc).Relay(t.Context())
		if err == nil {
			err = s.Send(&peerv1.PeerRelayFrame{Payload: &peerv1.PeerRelayFrame_Open{Open: &peerv1.PeerRelayOpen{SandboxId: "x",
				Target: &openshellv1.RelayOpen{Target: &openshellv1.RelayOpen_Ssh{Ssh: &openshellv1.SshRelayTarget{}}}}}})
		}
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("a CLI-certificate caller on b's peer service: %v; want the TLS handshake refused", err)
		}
		// Nor does a bare TLS client without a certificate (a sandbox) get through.
		c, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(b.peer), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil {
			t.Fatalf("a caller without a certificate read from the peer service")
		}
	})

	t.Run("KillA", func(t *testing.T) {
		start := time.Now()
		if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-a.waited
		// While the stand-in still sends the supervisor to the dead replica, a's
		// records count until its lease ends; then b no longer reports s2 READY.
		for p := phaseOn(apiB, s2); p == ready; p = phaseOn(apiB, s2) {
			if time.Since(start) > 40*time.Second {
				t.Fatalf("40 s after kill -9 of a (lease %s), b still reports %s READY on a's stale record", replica.DefaultLease, s2)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("kill -9 of replica a → b stops reporting %s READY after %s (a's lease: %s)", s2, time.Since(start).Round(10*time.Millisecond), replica.DefaultLease)
		if _, err := cli(t.Context(), "-g", "b", "sandbox", "exec", s2, "--", "true"); err == nil {
			t.Error("exec through b succeeded while the session's holder is dead and no supervisor reconnected")
		}
		start = time.Now()
		fwd.backend.Store("127.0.0.1:" + strconv.Itoa(b.port))
		deadline := time.Now().Add(90 * time.Second)
		for {
			h, err := holderOf(s2)
			if err == nil && h.ReplicaID == "b" && phaseOn(apiB, s2) == ready {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("90 s after kill -9 of a, %s: holder %+v (%v), phase %v; want READY through b", s2, h, err, phaseOn(apiB, s2))
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("stand-in switched to b → %s READY through b in %s", s2, time.Since(start).Round(10*time.Millisecond))
		out := mustCLI(t, "-g", "b", "sandbox", "exec", s2, "--", "echo", "after-failover")
		if !strings.Contains(out, "after-failover") {
			t.Fatalf("exec through b after the failover: %q", out)
		}
		mustCLI(t, "-g", "b", "sandbox", "delete", s2)
	})
}
