package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"google.golang.org/grpc/credentials"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/gateway/auth"
	"github.com/openshell/openshell/internal/relayframe"
	"github.com/openshell/openshell/internal/rundir"
)

// Per-sandbox sockets: each container sandbox reaches the gateway through a socket
// of its own, in a directory the driver bind-mounts into that container only. The
// socket is the identity (no TLS): every connection on it is bound to its sandbox,
// which auth.LocalPeer.SandboxID carries into the auth layer. Drivers mount the
// directory, not the file, so the socket a restarted gateway re-creates in the same
// directory is what an existing container sees.

// sandboxSockets opens, serves and removes the per-sandbox sockets of one gateway.
type sandboxSockets struct {
	base string // <runtime dir>/sb
	log  *slog.Logger

	mu   sync.Mutex
	lis  map[string]*net.UnixListener
	bulk map[string]*net.UnixListener // each sandbox's bulk stream socket
	up   *sandboxServers              // nil until the gRPC server is up
	// pending: what to start once it is up (until then, connections wait in the
	// sockets' listen queues).
	pending []func(*sandboxServers)
	closed  bool
}

// sandboxServers serve the per-sandbox sockets: grpc each gateway socket, bulk one
// bulk stream of a sandbox.
type sandboxServers struct {
	grpc func(net.Listener)
	bulk func(c *net.UnixConn, sandboxID string)
}

// newSandboxSockets prepares <runtime dir of stateDir>/sb.
func newSandboxSockets(stateDir string, log *slog.Logger) (*sandboxSockets, error) {
	run := rundir.For(stateDir)
	if err := rundir.Ensure(run); err != nil {
		return nil, fmt.Errorf("per-sandbox gateway sockets: %w", err)
	}
	base := filepath.Join(run, "sb")
	if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("per-sandbox gateway sockets: %w", err)
	}
	return &sandboxSockets{base: base, log: log, lis: map[string]*net.UnixListener{}, bulk: map[string]*net.UnixListener{}}, nil
}

// dirName is a short, fixed name for a sandbox's directory (a socket path must
// fit sun_path's 107 bytes, and ids may be long); 64 bits of a hash keep two
// sandboxes apart.
func dirName(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:8])
}

// Dir is the host directory of a sandbox's socket.
func (m *sandboxSockets) Dir(id string) string { return filepath.Join(m.base, dirName(id)) }

// Open creates (or re-creates after a restart) the sandbox's socket and serves it,
// and returns its directory. Opening an open socket returns its directory again.
func (m *sandboxSockets) Open(id string) (string, error) {
	if id == "" {
		return "", errors.New("per-sandbox gateway socket: empty sandbox id")
	}
	dir := m.Dir(id)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return "", errors.New("per-sandbox gateway socket: the gateway is stopping")
	}
	if _, ok := m.lis[id]; ok {
		return dir, nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("sandbox %s: socket dir: %w", id, err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return "", fmt.Errorf("sandbox %s: socket dir: %w", id, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("sandbox %s: socket dir %s is not a directory; remove it", id, dir)
	}
	l, err := m.listenSandbox(dir, drivers.GatewaySocketName, "gateway socket", id, st)
	if err != nil {
		return "", err
	}
	// Beside it, the socket for file transfers' bytes (see Server.ServeSandboxBulk).
	// A gateway that cannot make it still serves the sandbox: its supervisor sends
	// transfers over the session.
	if bl, berr := m.listenSandbox(dir, relayframe.BulkSocketName, "bulk socket", id, st); berr != nil {
		m.log.Warn("no bulk socket for this sandbox; its transfers go over the session", "sandbox_id", id, "err", berr)
	} else {
		m.bulk[id] = bl
		m.whenUp(func(s *sandboxServers) { m.acceptBulk(bl, id, s.bulk) })
	}
	m.lis[id] = l
	sl := &sandboxListener{UnixListener: l, id: id}
	m.whenUp(func(s *sandboxServers) { s.grpc(sl) })
	return dir, nil
}

// whenUp runs f in a goroutine of its own once the servers are up: now if they
// are, else at start. m.mu is held.
func (m *sandboxSockets) whenUp(f func(*sandboxServers)) {
	if m.up != nil {
		go f(m.up)
		return
	}
	m.pending = append(m.pending, f)
}

// listenSandbox creates socket name (the kind of socket it is, for errors) in a
// sandbox's directory dir (whose Lstat is st), owned as the directory is and mode
// 0600.
func (m *sandboxSockets) listenSandbox(dir, name, kind, id string, st os.FileInfo) (*net.UnixListener, error) {
	path := filepath.Join(dir, name)
	fail := func(what string, err error) error {
		return fmt.Errorf("sandbox %s: %s %s: %s: %w", id, kind, path, what, err)
	}
	// Whatever is there is this gateway's own leftover (the directory is private to
	// it): a socket of an earlier run, which the new one replaces.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fail("remove the one of an earlier run (remove it by hand if it is not a socket)", err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fail("listen", err)
	}
	// A driver may have given the directory to the user a rootless engine runs as
	// (the container's root); the socket goes to the same owner, else the
	// supervisor could not connect to the re-created socket after a restart.
	uid, gid := os.Geteuid(), os.Getegid()
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		uid, gid = int(sys.Uid), int(sys.Gid)
	}
	if uid != os.Geteuid() || gid != os.Getegid() {
		if err := os.Chown(path, uid, gid); err != nil {
			l.Close()
			return nil, fail(fmt.Sprintf("give it to the directory's owner %d:%d", uid, gid), err)
		}
		// That user's engine mounts the directory again when the container restarts:
		// the directories above it, which a start of the gateway closed, let it
		// pass (search only; each sandbox's directory stays its owner's).
		if err := rundir.LetTraverse(m.base, uid); err != nil {
			l.Close()
			return nil, fail(fmt.Sprintf("let user %d pass the directories above it", uid), err)
		}
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fail("chmod 0600", err)
	}
	return l, nil
}

// maxBulkStreams bounds the bulk streams one sandbox has open at once (a transfer
// holds one; the gateway's relay limit bounds those that pair): a container that
// opens more, say without ever naming a relay, has the extra ones closed at once.
var maxBulkStreams = 64

// acceptBulk serves the bulk streams of sandbox id's bulk socket until it closes.
func (m *sandboxSockets) acceptBulk(l *net.UnixListener, id string, serve func(*net.UnixConn, string)) {
	open := make(chan struct{}, maxBulkStreams)
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		select {
		case open <- struct{}{}:
			go func() {
				defer func() { <-open }()
				serve(c, id)
			}()
		default:
			m.log.Warn("too many bulk streams open; closing a new one", "sandbox_id", id, "limit", maxBulkStreams)
			c.Close()
		}
	}
}

// Remove closes a sandbox's socket and removes its directory (at delete).
func (m *sandboxSockets) Remove(id string) {
	m.mu.Lock()
	l, bl := m.lis[id], m.bulk[id]
	delete(m.lis, id)
	delete(m.bulk, id)
	m.mu.Unlock()
	if l != nil {
		_ = l.Close()
	}
	if bl != nil {
		_ = bl.Close()
	}
	if err := os.RemoveAll(m.Dir(id)); err != nil {
		m.log.Warn("could not remove a sandbox's gateway socket dir", "sandbox_id", id, "err", err)
	}
}

// Prune removes the directories of sandboxes the gateway no longer knows (deleted
// while it was down).
func (m *sandboxSockets) Prune(known map[string]bool) {
	keep := map[string]bool{}
	for id := range known {
		keep[dirName(id)] = true
	}
	ents, err := os.ReadDir(m.base)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !keep[e.Name()] {
			_ = os.RemoveAll(filepath.Join(m.base, e.Name()))
		}
	}
}

// start serves the sockets opened so far and every later one: serve the gRPC
// sockets, bulk each bulk stream.
func (m *sandboxSockets) start(serve func(net.Listener), bulk func(c *net.UnixConn, sandboxID string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.up = &sandboxServers{grpc: serve, bulk: bulk}
	for _, f := range m.pending {
		go f(m.up)
	}
	m.pending = nil
}

// Close closes every socket; the sandboxes' directories stay for the next run
// (containers keep them mounted).
func (m *sandboxSockets) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for id, l := range m.lis {
		_ = l.Close()
		delete(m.lis, id)
	}
	for id, l := range m.bulk {
		_ = l.Close()
		delete(m.bulk, id)
	}
	_ = os.Remove(m.base) // only when no sandbox is left
	return nil
}

// sandboxListener marks every connection with the sandbox its socket belongs to.
type sandboxListener struct {
	*net.UnixListener
	id string
}

func (l *sandboxListener) Accept() (net.Conn, error) {
	c, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	return &sandboxConn{UnixConn: c, id: l.id}, nil
}

type sandboxConn struct {
	*net.UnixConn
	id string
}

// sandboxPeer is the identity of a connection on a sandbox's socket.
func sandboxPeer(c *sandboxConn) credentials.AuthInfo {
	return auth.LocalPeer{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		SandboxID:      c.id,
	}
}
