// Package replica lets several gateway replicas on one database act as one gateway.
// Each replica holds a lease in the store (renewed on a heartbeat) and records there
// which supervisor sessions it holds; the others derive the sandbox's phase from those
// records and reach a session through its holder's peer service (peer.go), which opens
// the relay on the session and pipes the bytes back. A replica that dies stops
// renewing: its records stop counting once its lease ends, and when its supervisors
// reconnect to another replica that one records itself as the holder.
package replica

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/peerv1"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/internal/grpcopts"
)

// Defaults.
const (
	// DefaultLease is how long a replica's records count after its last renewal; it
	// renews every third of it.
	DefaultLease = 15 * time.Second
	// DefaultPeerPort is the peer service's port when an address names none.
	DefaultPeerPort = 17672
	// pruneAfter: leases that ended this many lease periods ago are deleted.
	pruneAfter = 20
	// snapshotAge bounds how stale the live-session snapshot behind Live may be.
	snapshotAge = time.Second
)

// Config configures a Registry.
type Config struct {
	// ID names this replica (default: the host name).
	ID string
	// PeerAddress is where the other replicas reach this one's peer service
	// (host:port, the host specific: an IP or a name the others resolve).
	PeerAddress string
	// Lease is DefaultLease when zero.
	Lease time.Duration
	// ClientTLS is the peer client's TLS config (see TLS).
	ClientTLS *tls.Config
	Log       *slog.Logger
}

// DefaultID is the default replica id: the host name (in Kubernetes, the pod name).
func DefaultID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "gateway"
	}
	return h
}

// ParsePeerAddress checks a peer address (host:port, or host alone for the default
// port) and returns it as host:port. advertised says the address is one others dial,
// so an unspecified host (0.0.0.0, ::, empty) is refused.
func ParsePeerAddress(field, addr string, advertised bool) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", fmt.Errorf("%s is empty: set host:port, e.g. 10.0.0.5:%d", field, DefaultPeerPort)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil { // a host alone: the default port
		host, port = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), strconv.Itoa(DefaultPeerPort)
		if strings.Contains(host, ":") && net.ParseIP(host) == nil {
			return "", fmt.Errorf("%s %q is not host:port (an IPv6 address goes in brackets: [::1]:%d): %v", field, addr, DefaultPeerPort, err)
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (advertised && n == 0) {
		return "", fmt.Errorf("%s %q: port %q is not a number in 1-65535", field, addr, port)
	}
	if net.ParseIP(host) == nil && strings.Trim(strings.ToLower(host), "abcdefghijklmnopqrstuvwxyz0123456789-._") != "" {
		return "", fmt.Errorf("%s %q: host %q is not an IP address or host name", field, addr, host)
	}
	if advertised {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			return "", fmt.Errorf("%s %q: other replicas cannot dial an unspecified host; advertise this replica's own IP (in Kubernetes the pod IP, e.g. OPENSHELL_PEER_ADVERTISE_ADDRESS=$(POD_IP):%d)", field, addr, DefaultPeerPort)
		}
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), nil
}

// Registry is the hub's Remote: this replica's lease and session records, the
// other replicas' records, and peer calls to them.
type Registry struct {
	st    store.Sessions
	id    string
	addr  string
	lease time.Duration
	tls   *tls.Config
	log   *slog.Logger
	hub   *hub.Hub

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by peer address

	snapMu  sync.Mutex
	snapAt  time.Time
	snapErr error
	live    map[string]liveRec // sandbox id → its live record

	cancel  context.CancelFunc
	done    chan struct{}
	watched chan struct{}
}

type liveRec struct{ replica, instance string }

var _ hub.Remote = (*Registry)(nil)

// New checks cfg and returns a registry; Start takes the lease.
func New(st store.Sessions, cfg Config) (*Registry, error) {
	if st == nil {
		return nil, errors.New("replica: the store does not record session holders; use the sqlite or postgres store")
	}
	if cfg.ID == "" {
		cfg.ID = DefaultID()
	}
	addr, err := ParsePeerAddress("peer advertise address", cfg.PeerAddress, true)
	if err != nil {
		return nil, err
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Lease < 3*time.Second {
		return nil, fmt.Errorf("replica: lease %s is shorter than 3s; a heartbeat every third of it would race the store", cfg.Lease)
	}
	if cfg.ClientTLS == nil {
		return nil, errors.New("replica: no peer TLS config; replicas authenticate each other with the gateway certificate (TLS cannot be disabled)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Registry{st: st, id: cfg.ID, addr: addr, lease: cfg.Lease, tls: cfg.ClientTLS,
		log: cfg.Log.With("replica_id", cfg.ID), conns: map[string]*grpc.ClientConn{}, done: make(chan struct{}), watched: make(chan struct{})}, nil
}

// ReplicaID implements hub.Remote.
func (r *Registry) ReplicaID() string { return r.id }

// PeerAddress is the advertised peer address.
func (r *Registry) PeerAddress() string { return r.addr }

// Start takes the lease (an error when the store cannot be written), attaches the
// registry to h and keeps renewing until Close. Replica ids must be unique among the
// replicas running at once (the default, the host name, is in Kubernetes).
func (r *Registry) Start(ctx context.Context, h *hub.Hub) error {
	r.hub = h
	// A starting replica holds no session: records under its id are left over from
	// an earlier process (killed), and must not look live once it renews the lease.
	if err := r.st.RemoveReplica(ctx, r.id); err != nil {
		return fmt.Errorf("replica %s: clear the records of an earlier run: %w", r.id, err)
	}
	if _, err := r.renew(ctx); err != nil {
		return err
	}
	h.SetRemote(r)
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	go r.loop(lctx)
	go r.watch(lctx)
	r.log.Info("gateway replica lease taken", "peer_address", r.addr, "lease", r.lease)
	return nil
}

func (r *Registry) renew(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.lease/3)
	defer cancel()
	created, err := r.st.RenewReplica(ctx, r.id, r.addr, time.Now().Add(r.lease).UnixMilli())
	if err != nil {
		return false, fmt.Errorf("replica %s: renew lease: %w", r.id, err)
	}
	return created, nil
}

func (r *Registry) loop(ctx context.Context) {
	defer close(r.done)
	t := time.NewTicker(r.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		created, err := r.renew(ctx)
		if err != nil {
			r.log.Warn("could not renew the replica lease; other replicas will stop routing to this one when it ends", "err", err)
			continue
		}
		if created {
			// The lease row was pruned while this replica stalled, and its session
			// records with it: write them again.
			for _, c := range r.hub.Claimed() {
				if err := r.Claim(ctx, c); err != nil {
					r.log.Warn("could not re-record a session", "sandbox_id", c.SandboxID, "err", err)
				}
			}
		}
		pctx, cancel := context.WithTimeout(ctx, r.lease/3)
		if err := r.st.PruneReplicas(pctx, time.Now().Add(-pruneAfter*r.lease).UnixMilli()); err != nil {
			r.log.Debug("pruning dead replicas failed", "err", err)
		}
		cancel()
	}
}

// Close stops renewing, gives the lease up (with this replica's records: its
// supervisors reconnect elsewhere) and closes the peer connections.
func (r *Registry) Close() error {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		<-r.watched
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := r.st.RemoveReplica(ctx, r.id)
	r.mu.Lock()
	for _, c := range r.conns {
		_ = c.Close()
	}
	r.conns = map[string]*grpc.ClientConn{}
	r.mu.Unlock()
	return err
}

// HolderFrom converts a stored record into the hub's view; self is this replica's
// id (its own records are never "live elsewhere"). A record that does not decode is
// an error naming the field: the binding it carries must not be guessed.
func HolderFrom(rec store.SessionHolder, self string, now time.Time) (*hub.Holder, error) {
	h := &hub.Holder{SandboxID: rec.SandboxID, InstanceID: rec.InstanceID, Replica: rec.ReplicaID, PeerAddress: rec.PeerAddress,
		Live: rec.ReplicaID != self && rec.Live(now)}
	if len(rec.SecretSum) != len(h.SecretSum) {
		return nil, fmt.Errorf("session record of sandbox %s: secret_sum is %d bytes, want %d (SHA-256); the record is damaged: delete the row or reconnect the supervisor", rec.SandboxID, len(rec.SecretSum), len(h.SecretSum))
	}
	copy(h.SecretSum[:], rec.SecretSum)
	if len(rec.HostKey) > 0 {
		k, err := ssh.ParsePublicKey(rec.HostKey)
		if err != nil {
			return nil, fmt.Errorf("session record of sandbox %s: host_key is not an SSH public key: %v", rec.SandboxID, err)
		}
		h.HostKey = k
	}
	return h, nil
}

// Holder implements hub.Remote.
func (r *Registry) Holder(ctx context.Context, sandboxID string) (*hub.Holder, error) {
	rec, err := r.st.GetSession(ctx, sandboxID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return HolderFrom(rec, r.id, time.Now())
}

// Live implements hub.Remote from a snapshot at most a second or two old.
func (r *Registry) Live(sandboxID string) bool {
	r.snapMu.Lock()
	stale := time.Since(r.snapAt) > 2*snapshotAge
	r.snapMu.Unlock()
	if stale { // the watch loop is behind (or not running): read now
		r.refresh(context.Background())
	}
	r.snapMu.Lock()
	defer r.snapMu.Unlock()
	rec, ok := r.live[sandboxID]
	return ok && rec.replica != r.id
}

// watch refreshes the snapshot every second and tells the hub of sessions that came
// or went on other replicas, so this replica's phase watchers see them too.
func (r *Registry) watch(ctx context.Context) {
	defer close(r.watched)
	t := time.NewTicker(snapshotAge)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		came, went := r.refresh(ctx)
		for id, rec := range came {
			r.hub.RemoteChanged(id, rec.instance, true)
		}
		for id, rec := range went {
			r.hub.RemoteChanged(id, rec.instance, false)
		}
	}
}

// refresh re-reads the live records and returns those of other replicas that
// appeared and disappeared since the last read.
func (r *Registry) refresh(ctx context.Context) (came, went map[string]liveRec) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	recs, err := r.st.ListSessions(ctx, time.Now().UnixMilli())
	cancel()
	r.snapMu.Lock()
	defer r.snapMu.Unlock()
	r.snapAt = time.Now()
	if err != nil {
		if r.snapErr == nil {
			r.log.Warn("could not list the other replicas' sessions; their sandboxes show as not connected", "err", err)
		}
		r.snapErr = err
		return nil, nil // keep the last snapshot rather than flap every phase
	}
	r.snapErr = nil
	now := make(map[string]liveRec, len(recs))
	for _, rec := range recs {
		now[rec.SandboxID] = liveRec{replica: rec.ReplicaID, instance: rec.InstanceID}
	}
	came, went = map[string]liveRec{}, map[string]liveRec{}
	for id, rec := range now {
		if old, ok := r.live[id]; rec.replica != r.id && (!ok || old != rec) {
			came[id] = rec
		}
	}
	for id, old := range r.live {
		if rec, ok := now[id]; old.replica != r.id && (!ok || rec.replica == r.id) {
			went[id] = old
		}
	}
	r.live = now
	return came, went
}

// Claim implements hub.Remote.
func (r *Registry) Claim(ctx context.Context, h hub.Holder) error {
	rec := store.SessionHolder{SandboxID: h.SandboxID, ReplicaID: r.id, InstanceID: h.InstanceID, SecretSum: h.SecretSum[:]}
	if h.HostKey != nil {
		rec.HostKey = h.HostKey.Marshal()
	}
	return r.st.PutSession(ctx, rec)
}

// Release implements hub.Remote.
func (r *Registry) Release(ctx context.Context, sandboxID, replica string) error {
	return r.st.DeleteSession(ctx, sandboxID, replica)
}

func (r *Registry) peer(addr string) (peerv1.PeerClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.conns[addr]; c != nil {
		return peerv1.NewPeerClient(c), nil
	}
	c, err := grpc.NewClient("passthrough:///"+addr, grpcopts.Dial(grpcopts.TLS(r.tls))...)
	if err != nil {
		return nil, fmt.Errorf("replica: peer %s: %w", addr, err)
	}
	r.conns[addr] = c
	return peerv1.NewPeerClient(c), nil
}

// OpenRelay implements hub.Remote: Peer.Relay on the holder.
func (r *Registry) OpenRelay(ctx context.Context, h *hub.Holder, target *openshellv1.RelayOpen) (hub.Conn, error) {
	if h.PeerAddress == "" {
		return nil, fmt.Errorf("sandbox %s: replica %s holds its session but left no peer address: %w", h.SandboxID, h.Replica, hub.ErrNoSession)
	}
	c, err := r.peer(h.PeerAddress)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.Relay(sctx)
	if err == nil {
		err = stream.Send(&peerv1.PeerRelayFrame{Payload: &peerv1.PeerRelayFrame_Open{Open: &peerv1.PeerRelayOpen{SandboxId: h.SandboxID, Target: target}}})
	}
	var first *peerv1.PeerRelayFrame
	if err == nil {
		first, err = stream.Recv()
	}
	if err != nil {
		cancel()
		return nil, fromStatus(h, err)
	}
	opened := first.GetOpened()
	if opened == nil {
		cancel()
		return nil, fmt.Errorf("sandbox %s: replica %s answered the relay without opened: %w", h.SandboxID, h.Replica, hub.ErrRelayFailed)
	}
	key := h.HostKey
	if raw := opened.GetHostKey(); len(raw) > 0 {
		if key, err = ssh.ParsePublicKey(raw); err != nil {
			cancel()
			return nil, fmt.Errorf("sandbox %s: replica %s sent a host key that does not parse: %v: %w", h.SandboxID, h.Replica, err, hub.ErrRelayFailed)
		}
	}
	return hub.StreamConn(clientFrames{stream}, key, cancel), nil
}

// fromStatus maps the holder's answer back to the hub's errors, so the API edge
// reports a remote session as it would a local one.
func fromStatus(h *hub.Holder, err error) error {
	st, _ := status.FromError(err)
	via := fmt.Sprintf("sandbox %s: via replica %s (%s): %s", h.SandboxID, h.Replica, h.PeerAddress, st.Message())
	switch st.Code() {
	case codes.NotFound:
		return fmt.Errorf("%s: %w", via, hub.ErrNoSession)
	case codes.ResourceExhausted:
		return fmt.Errorf("%s: %w", via, hub.ErrTooManyRelays)
	case codes.Canceled, codes.DeadlineExceeded:
		return err
	}
	return fmt.Errorf("%s: %w", via, hub.ErrRelayFailed)
}

type clientFrames struct {
	s grpc.BidiStreamingClient[peerv1.PeerRelayFrame, peerv1.PeerRelayFrame]
}

func (f clientFrames) Send(p []byte) error {
	return f.s.Send(&peerv1.PeerRelayFrame{Payload: &peerv1.PeerRelayFrame_Data{Data: p}})
}

func (f clientFrames) Recv() ([]byte, error) {
	m, err := f.s.Recv()
	if err != nil {
		return nil, err
	}
	return m.GetData(), nil
}

func (f clientFrames) CloseSend() error { return f.s.CloseSend() }
