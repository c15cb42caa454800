package supervisor

// Work done before the sandbox is known. A warm pool's VM boots to the point where its
// supervisor waits for its configuration, and a create is Ready as soon as the
// supervisor has started up from there; whatever does not depend on the sandbox's
// identity is done while it waits instead (measured under TCG on a pooled VM, before
// this: 1.1 s in the first getrandom, the kernel's random pool being initialised on
// demand in an idle guest; ~0.35 s in the first marshal of each protobuf type; the
// SSH host key). None of it holds anything of a sandbox, and a pooled VM serves one
// sandbox only, so nothing done here is ever shared between two.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/openshell/openshell/api/openshellv1"
	sandboxv1 "github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/confine"
	"github.com/openshell/openshell/supervisor/credentials"
	"github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/policy"
	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/session"
)

// Warm is the result of Prewarm, handed to Run in Options.Warm.
type Warm struct {
	stopped atomic.Bool
	done    chan struct{}

	mu      sync.Mutex
	hostKey ssh.Signer // taken once
	took    time.Duration
	// ca is the sandbox CA made ahead, its bundle written at bundlePath, taken once;
	// after bundleAsked none is written.
	ca          *credentials.CA
	bundlePath  string
	bundleAsked bool
	// spares are confinement helpers started ahead by reaper, taken once
	// (takeSpares); after sparesAsked none are started.
	reaper      *reaper.Reaper
	spares      *confine.Spares[*reaper.Proc]
	sparesAsked bool
}

// Prewarm starts the identity-free part of the supervisor's start-up in the
// background: the kernel's random pool (the first getrandom blocks until it is
// initialised), this boot's SSH host key, the image files a start reads
// (warmFiles), the runtime's and net package's lazy set-up (warmRuntime), the
// protobuf types' lazy set-up, one run of the policy compiler (which also pays, under
// emulation, for translating that code once), the sandbox CA and its bundle, a
// rehearsal of the first gateway calls in-process, and last spare confinement
// helpers. Run stops what is left of it when the configuration arrives: the work it
// needs is then done on its own path.
//
// bundlePath is where the sandbox CA bundle will go (Options.Root joined with
// CABundlePath): the CA is made ahead and its bundle written there, so that the start
// has nothing left to write. "" makes none.
//
// spares is how many confinement helpers to start ahead (0: none), for a supervisor
// that confines its programs and runs them in its own network namespace (a VM
// guest's): each is the supervisor binary started and waiting, root and unconfined,
// for one program (confine.Spares), and holds nothing of a sandbox until then. Two
// serve a pooled VM's main process and its first exec or SSH session, so that a
// claimed guest starts no supervisor binary of its own (~50 ms of a guest's CPU each
// under emulation, run beside the other guests' start-ups when creates come together).
func Prewarm(bundlePath string, spares int) *Warm {
	w := &Warm{done: make(chan struct{})}
	go w.run(bundlePath, spares)
	return w
}

func (w *Warm) run(bundlePath string, spares int) {
	defer close(w.done)
	t0 := time.Now()
	defer func() {
		w.mu.Lock()
		w.took = time.Since(t0)
		w.mu.Unlock()
	}()
	var b [16]byte
	_, _ = rand.Read(b[:])
	if _, priv, err := ed25519.GenerateKey(rand.Reader); err == nil {
		if signer, err := ssh.NewSignerFromKey(priv); err == nil {
			w.mu.Lock()
			w.hostKey = signer
			w.mu.Unlock()
		}
	}
	if w.stopped.Load() {
		return
	}
	warmFiles()
	warmRuntime()
	// Each message type sets up its encoder on its first use: do it for every type
	// this binary knows (the gateway API, the policy wire types), not only the few a
	// guess would name.
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if w.stopped.Load() {
			return false
		}
		m := mt.New().Interface()
		if b, err := proto.Marshal(m); err == nil {
			_ = proto.Unmarshal(b, m)
		}
		return true
	})
	if w.stopped.Load() {
		return
	}
	_, _ = policy.Compile(policy.Default())
	// The first thing a claim runs in the guest: decoding the bootstrap document.
	if doc, err := json.Marshal(&bootstrap.Config{Endpoint: "http://rehearsal:1", SandboxID: "rehearsal", SandboxName: "rehearsal",
		Token: "rehearsal", CAPEM: []byte("rehearsal"), Main: bootstrap.MainProcessSpec{Version: 1, Command: []string{"true"}, Env: map[string]string{"K": "v"}}}); err == nil {
		_, _ = bootstrap.Read(bytes.NewReader(doc))
	}
	if w.stopped.Load() {
		return
	}
	if bundlePath != "" {
		w.prepareCA(bundlePath)
		if w.stopped.Load() {
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := rehearseSession(ctx); err != nil {
		slog.Debug("warm-up: the session rehearsal failed (only its speed-up is lost)", "err", err)
	}
	// Last: a cold boot's configuration is in hand before this, and its start-up
	// needs the guest's CPU more than a spare does.
	if spares > 0 && !w.stopped.Load() {
		w.startSpares(spares)
	}
}

// startSpares starts n spare helpers in the background, with the reaper that will
// own them (and the supervisor's other children: Run takes it).
func (w *Warm) startSpares(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sparesAsked {
		return
	}
	r := reaper.New(os.Getpid() == 1)
	w.reaper = r
	w.spares = &confine.Spares[*reaper.Proc]{Self: defaultSelfExe, Start: r.Start, Keep: n, Kill: killSpare}
	w.spares.Fill()
}

// takeSpares returns the spares started ahead and their reaper, once; nils when
// there are none, and none are started after.
func (w *Warm) takeSpares() (*reaper.Reaper, *confine.Spares[*reaper.Proc]) {
	if w == nil {
		return nil, nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sparesAsked = true
	r, sp := w.reaper, w.spares
	w.reaper, w.spares = nil, nil
	return r, sp
}

// warmFiles reads what a start reads from the image before it can report the sandbox
// up (the account files, the system CA roots, the directories a command is looked up
// in), so that their blocks come from memory then instead of the image's disk: a
// virtio-blk read costs an emulated guest milliseconds. What the files hold is not
// kept; an image without some of them is fine.
func warmFiles() {
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		_, _ = os.ReadFile(f)
	}
	_ = credentials.SystemRoots()
	// The guest's init set PATH to the default a sandbox's processes get.
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		_, _ = os.ReadDir(d)
	}
}

// warmRuntime runs the Go runtime's and net package's set-up done once per process
// on first use: the runtime metrics the start-up's log line reads (readGC), and a
// loopback listener like the egress proxy's (the net package probes the IP stacks
// and multipath TCP then). Under emulation they took ~4 and ~14 ms of a pooled
// guest's claim.
func warmRuntime() {
	_ = readGC()
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	if _, err := rehearsePlaceholders(); err != nil {
		slog.Debug("warm-up: the placeholder fetch rehearsal failed (only its speed-up is lost)", "err", err)
	}
}

// rehearsePlaceholders runs the guest's provider placeholder fetch once against a
// canned answer served in-process (an HTTP response's parse and the set's decode take
// a few ms of an emulated guest on their first run; the start's real fetch is on the
// way to the SSH server).
func rehearsePlaceholders() (*egress.PlaceholderSet, error) {
	const answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" +
		`{"providers":[{"name":"rehearsal","env":{"K":"v"},"hosts":["rehearsal.invalid"]}]}`
	open := func(context.Context) (net.Conn, error) {
		near, far := net.Pipe()
		go func() {
			defer far.Close()
			_, _ = far.Read(make([]byte, 512)) // the request
			_, _ = io.WriteString(far, answer)
		}()
		return near, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return egress.RunnerPlaceholders(ctx, open)
}

// rehearseSession runs the supervisor's first gateway calls once against a stand-in
// served in this process over a socket pair: the gRPC client with the options of
// session.Dial, a config call, a session stream's hello, a log push. Nothing leaves
// the process; what it buys is the client's first-use cost (connection set-up,
// HTTP/2 and header coding, the calls' types), which under emulation is a large part
// of the first real calls.
func rehearseSession(ctx context.Context) error {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "rehearsal")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			if i == 1 {
				conns[0].Close()
			}
			return err
		}
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(rehearsalHandler))
	defer srv.Stop()
	go srv.Serve(&oneConnListener{c: conns[1], done: make(chan struct{})})
	var once sync.Once
	cc, err := session.Dial(session.DialOptions{Endpoint: "http://rehearsal:1", Token: func() (string, error) { return "rehearsal", nil },
		Dial: func(context.Context, string) (net.Conn, error) {
			c := net.Conn(nil)
			once.Do(func() { c = conns[0] })
			if c == nil {
				return nil, net.ErrClosed
			}
			return c, nil
		}})
	if err != nil {
		conns[0].Close()
		return err
	}
	defer cc.Close()
	// The config call answers with a policy, converted as a real start converts the
	// gateway's (its conversion code is otherwise first run on the claim's path).
	resp, err := sandboxConfig(ctx, cc, "rehearsal", true)
	if err != nil {
		return err
	}
	if _, src, err := initialPolicy(&bootstrap.Config{}, resp); err != nil || src != "gateway policy" {
		return fmt.Errorf("rehearsal: the config answer's policy was not taken (%s): %v", src, err)
	}
	api := pb.NewOpenShellClient(cc)
	st, err := api.ConnectSupervisor(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&pb.SupervisorMessage{Payload: &pb.SupervisorMessage_Hello{Hello: &pb.SupervisorHello{SandboxId: "rehearsal"}}}); err != nil {
		return err
	}
	if _, err := st.Recv(); err != nil {
		return err
	}
	_ = st.CloseSend()
	logs, err := api.PushSandboxLogs(ctx)
	if err != nil {
		return err
	}
	if err := logs.Send(&pb.PushSandboxLogsRequest{SandboxId: "rehearsal"}); err != nil {
		return err
	}
	_, err = logs.CloseAndRecv()
	return err
}

// rehearsalHandler answers each call of the rehearsal with an empty reply of its type.
func rehearsalHandler(_ any, ss grpc.ServerStream) error {
	m, _ := grpc.MethodFromServerStream(ss)
	switch m {
	case pb.OpenShell_GetSandboxConfig_FullMethodName:
		if err := ss.RecvMsg(&sandboxv1.GetSandboxConfigRequest{}); err != nil {
			return err
		}
		return ss.SendMsg(&sandboxv1.GetSandboxConfigResponse{Version: 1, Policy: policy.Default().ToProto()})
	case pb.OpenShell_ConnectSupervisor_FullMethodName:
		if err := ss.RecvMsg(&pb.SupervisorMessage{}); err != nil {
			return err
		}
		return ss.SendMsg(&pb.GatewayMessage{Payload: &pb.GatewayMessage_SessionAccepted{SessionAccepted: &pb.SessionAccepted{SessionId: "rehearsal"}}})
	case pb.OpenShell_PushSandboxLogs_FullMethodName:
		for {
			if err := ss.RecvMsg(&pb.PushSandboxLogsRequest{}); err != nil {
				break
			}
		}
		return ss.SendMsg(&pb.PushSandboxLogsResponse{})
	}
	return status.Errorf(codes.Unimplemented, "rehearsal: %s", m)
}

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
	mu   sync.Mutex
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return &net.UnixAddr{Name: "rehearsal", Net: "unix"} }

// stop ends what is left of the warm-up (nil-safe).
func (w *Warm) stop() {
	if w != nil {
		w.stopped.Store(true)
	}
}

// takeHostKey returns the host key made ahead, once; nil when there is none (yet).
func (w *Warm) takeHostKey() ssh.Signer {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	k := w.hostKey
	w.hostKey = nil
	return k
}

// prepareCA makes the sandbox CA ahead and writes its bundle at path; the start takes
// the CA (takeCA) or, when it asked first, none is written. The CA is named after no
// sandbox (none is known yet); like the host key it is this boot's alone, and a
// pooled VM serves one sandbox. Before this, a claim made the CA and wrote the bundle
// (the system roots drafted ahead, then the CA added and the file renamed): 8-10 ms of
// an emulated guest's CPU.
func (w *Warm) prepareCA(path string) {
	ca, err := credentials.NewCA("")
	if err != nil {
		slog.Debug("warm-up: the CA made ahead failed (only its speed-up is lost)", "err", err)
		return
	}
	// Under the lock: a start that asked meanwhile writes its own bundle, and the two
	// writes must not cross.
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.bundleAsked {
		return
	}
	if err := ca.WriteBundle(path); err != nil {
		slog.Debug("warm-up: the CA bundle written ahead failed (only its speed-up is lost)", "err", err)
		return
	}
	w.ca, w.bundlePath = ca, path
}

// takeCA returns the CA made ahead when its bundle is at path, once; nil when there is
// none (yet), or its bundle was written elsewhere (then that file is removed).
func (w *Warm) takeCA(path string) *credentials.CA {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bundleAsked = true
	ca := w.ca
	w.ca = nil
	if ca != nil && w.bundlePath != path {
		os.Remove(w.bundlePath)
		return nil
	}
	return ca
}

// summary says how the warm-up stands, for the start-up log line: "none",
// "unfinished" or how long it took.
func (w *Warm) summary() string {
	if w == nil {
		return "none"
	}
	select {
	case <-w.done:
	default:
		return "unfinished"
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.took.Round(time.Millisecond).String()
}

// Done is closed when the warm-up has ended (finished or stopped).
func (w *Warm) Done() <-chan struct{} { return w.done }
