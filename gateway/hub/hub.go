// Package hub keeps the gateway's live supervisor sessions (one ConnectSupervisor
// stream per sandbox) and pairs relay requests with the RelayStream calls the
// supervisors open in answer. The gateway never dials into a sandbox: to reach one it
// asks the supervisor, on its session, to open a relay (OpenRelay), and the supervisor
// calls back with RelayStream carrying the channel id.
//
// # Binding a sandbox to one supervisor instance
//
// The sandbox token proves "some process of this sandbox", not "the supervisor that
// booted": a leaked token must not let its holder take the session over. So a session
// is bound to a supervisor instance. Each supervisor boot has an instance id (in the
// hello) and an instance secret (instancemd.InstanceSecret call metadata; minted per boot by
// the VM runner and served once in the bootstrap, or minted in memory by a container
// supervisor at start). The first hello for a sandbox binds it to that (instance id,
// secret) pair and to the SSH host key the supervisor registers (instancemd.HostKey); the
// binding outlives a dropped stream. Then:
//
//   - same instance id, same secret: a reconnect. It supersedes a live stream of the
//     same instance (logged), and must present the same host key.
//   - same instance id, another secret (or none): refused (ErrRefused).
//   - another instance id while the bound instance holds a live session: refused.
//   - another instance id while no session is live: the bound instance is gone (the
//     sandbox restarted, or the supervisor died): the new instance binds, replacing
//     the old binding (logged). A token holder racing a restart can therefore win the
//     binding only while the sandbox has no live supervisor, and the real supervisor's
//     next hello is then refused and logged to the sandbox's gateway log, where it
//     shows.
//
// Bindings live in memory: after a gateway restart the first instance to connect
// binds. Deleting the sandbox (Drop) forgets its binding.
//
// The pinned host key is handed out with every relay (Conn.HostKey), so the gateway's
// SSH client checks on every exec/connect/transfer that it talks to the SSH server of
// the bound supervisor, and CreateSshSession reports its fingerprint
// (HostKeyFingerprint) for clients that speak SSH through ForwardTcp.
//
// The wire messages are unchanged (SupervisorHello has only sandbox_id and
// instance_id): the secret and the key travel as call metadata. A hello without a
// secret is refused (a binding to an empty secret would protect nothing), and a
// supervisor that registers no host key gets no SSH relays.
package hub

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/grpcopts"
	"github.com/openshell/openshell/internal/instancemd"
)

// Errors returned by OpenRelay; the API edge maps them to gRPC codes.
var (
	// ErrNoSession: the sandbox has no connected supervisor (UNAVAILABLE).
	ErrNoSession = errors.New("no supervisor session")
	// ErrTooManyRelays: the per-sandbox relay limit is reached (RESOURCE_EXHAUSTED).
	ErrTooManyRelays = errors.New("too many concurrent relays")
	// ErrRelayFailed: the supervisor could not open the target, or did not call back in time.
	ErrRelayFailed = errors.New("relay failed")
	// ErrUnknownChannel: a RelayStream named a channel nobody is waiting for.
	ErrUnknownChannel = errors.New("unknown relay channel")
	// ErrRefused: a call came from a supervisor instance that is not the one the
	// sandbox is bound to, or with the wrong instance secret (PERMISSION_DENIED).
	ErrRefused = errors.New("supervisor instance refused")
	// ErrBadIdentity: the instance metadata of a call is malformed (INVALID_ARGUMENT).
	ErrBadIdentity = errors.New("malformed supervisor instance metadata")
)

// maxSecretLen bounds the instance secret a caller may present (64 hex chars for
// 32 bytes; a little room for other encodings).
const maxSecretLen = 256

// Instance is who a supervisor says it is: an instance id (the hello's, or
// instancemd.InstanceID), the secret it presents and, on ConnectSupervisor, its host key.
type Instance struct {
	ID      string
	Secret  string
	HostKey ssh.PublicKey // nil: none registered
}

// InstanceFromContext reads the instance metadata of an incoming call. helloID, when
// not empty, is the instance id of the call's hello and wins over instancemd.InstanceID.
// Missing values are empty; malformed ones are an ErrBadIdentity.
func InstanceFromContext(ctx context.Context, helloID string) (Instance, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	one := func(key string) (string, error) {
		v := md.Get(key)
		switch {
		case len(v) == 0:
			return "", nil
		case len(v) > 1:
			return "", fmt.Errorf("%s given %d times; send it once: %w", key, len(v), ErrBadIdentity)
		}
		return v[0], nil
	}
	inst := Instance{ID: helloID}
	var err error
	if inst.ID == "" {
		if inst.ID, err = one(instancemd.InstanceID); err != nil {
			return Instance{}, err
		}
	}
	if inst.Secret, err = one(instancemd.InstanceSecret); err != nil {
		return Instance{}, err
	}
	if len(inst.Secret) > maxSecretLen {
		return Instance{}, fmt.Errorf("%s is %d bytes, more than %d: %w", instancemd.InstanceSecret, len(inst.Secret), maxSecretLen, ErrBadIdentity)
	}
	key, err := one(instancemd.HostKey)
	if err != nil {
		return Instance{}, err
	}
	if key != "" {
		raw, err := base64.StdEncoding.DecodeString(key)
		if err != nil {
			return Instance{}, fmt.Errorf("%s is not standard base64: %v: %w", instancemd.HostKey, err, ErrBadIdentity)
		}
		if inst.HostKey, err = ssh.ParsePublicKey(raw); err != nil {
			return Instance{}, fmt.Errorf("%s is not an SSH public key: %v: %w", instancemd.HostKey, err, ErrBadIdentity)
		}
	}
	return inst, nil
}

// binding is the supervisor instance a sandbox is bound to (see the package doc).
type binding struct {
	instanceID string
	secret     [32]byte // SHA-256 of the secret: compared in constant time
	hostKey    ssh.PublicKey
}

func secretSum(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func (b *binding) secretMatches(s string) bool {
	sum := secretSum(s)
	return subtle.ConstantTimeCompare(b.secret[:], sum[:]) == 1
}

func keysEqual(a, b ssh.PublicKey) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return string(a.Marshal()) == string(b.Marshal())
}

// Defaults.
const (
	HeartbeatInterval = 15 * time.Second
	RelayOpenTimeout  = 10 * time.Second
	DefaultMaxRelays  = 64
	// ChunkSize is the largest data frame the hub sends on a RelayStream.
	ChunkSize = grpcopts.RelayChunk
)

// Listener is told when a sandbox's session comes or goes.
type Listener func(sandboxID, instanceID string, connected bool)

// Hub is safe for concurrent use.
type Hub struct {
	log       *slog.Logger
	onChange  Listener
	maxRelays int
	openWait  time.Duration

	// remote, when set, is the other gateway replicas' view (see Remote).
	remote atomic.Pointer[remoteRef]

	mu       sync.Mutex
	sessions map[string]*session      // by sandbox id
	bindings map[string]*binding      // by sandbox id; outlive sessions
	pending  map[string]*pendingRelay // by channel id
}

// Options configure a Hub.
type Options struct {
	Log       *slog.Logger
	OnChange  Listener
	MaxRelays int           // per sandbox; 0 = DefaultMaxRelays
	OpenWait  time.Duration // 0 = RelayOpenTimeout
}

// New returns an empty hub.
func New(o Options) *Hub {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MaxRelays == 0 {
		o.MaxRelays = DefaultMaxRelays
	}
	if o.OpenWait == 0 {
		o.OpenWait = RelayOpenTimeout
	}
	return &Hub{log: o.Log, onChange: o.OnChange, maxRelays: o.MaxRelays, openWait: o.OpenWait,
		sessions: map[string]*session{}, bindings: map[string]*binding{}, pending: map[string]*pendingRelay{}}
}

type session struct {
	id, sandboxID, instanceID string
	bound                     *binding
	out                       chan *openshellv1.GatewayMessage
	superseded                chan struct{}
	relays                    int
}

type pendingRelay struct {
	sandboxID string
	sess      *session
	result    chan pairResult
}

type pairResult struct {
	conn *pipeEnd
	err  error
}

// Connected reports whether the sandbox has a live session.
func (h *Hub) Connected(sandboxID string) bool {
	h.mu.Lock()
	_, ok := h.sessions[sandboxID]
	h.mu.Unlock()
	if !ok {
		if r := h.getRemote(); r != nil {
			return r.Live(sandboxID)
		}
	}
	return ok
}

// Count returns the number of live sessions.
func (h *Hub) Count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// InstanceID returns the instance id of the live session ("" when none).
func (h *Hub) InstanceID(sandboxID string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.sessions[sandboxID]; s != nil {
		return s.instanceID
	}
	return ""
}

// HostKey returns the SSH host key pinned for the sandbox's bound supervisor
// instance (nil when none is bound or it registered none).
func (h *Hub) HostKey(sandboxID string) ssh.PublicKey {
	h.mu.Lock()
	b := h.bindings[sandboxID]
	h.mu.Unlock()
	if b != nil {
		return b.hostKey
	}
	if rh := h.remoteHolder(context.Background(), sandboxID); rh != nil {
		return rh.HostKey
	}
	return nil
}

// HostKeyFingerprint is HostKey as ssh.FingerprintSHA256 ("SHA256:…"; "" for none).
func (h *Hub) HostKeyFingerprint(sandboxID string) string {
	if k := h.HostKey(sandboxID); k != nil {
		return ssh.FingerprintSHA256(k)
	}
	return ""
}

// Authorize checks a supervisor call other than ConnectSupervisor and RelayStream
// against the sandbox's binding. A call naming the bound instance with the wrong
// secret is always refused. With onlyBound (log pushes), a call from any other
// instance is refused too while the bound instance holds a live session; without
// it (exit reports, which the gateway already ignores from a stale instance) such a
// call passes. Without a binding the call is accepted (a restarting supervisor may
// report before its session binds).
func (h *Hub) Authorize(sandboxID string, inst Instance, onlyBound bool) error {
	h.mu.Lock()
	b := h.bindings[sandboxID]
	live := h.sessions[sandboxID] != nil
	h.mu.Unlock()
	if b == nil {
		// Another replica may hold the session: its binding is in the store.
		rh := h.remoteHolder(context.Background(), sandboxID)
		if rh == nil {
			return nil
		}
		b, live = rh.binding(), rh.Live
	}
	switch {
	case inst.ID == b.instanceID && !b.secretMatches(inst.Secret):
		return fmt.Errorf("sandbox %s: the call names supervisor instance %s but presents the wrong instance secret: %w", sandboxID, inst.ID, ErrRefused)
	case onlyBound && inst.ID != b.instanceID && live:
		return fmt.Errorf("sandbox %s: supervisor instance %q is not the instance %s that holds the sandbox's session: %w", sandboxID, inst.ID, b.instanceID, ErrRefused)
	}
	return nil
}

// Drop ends the sandbox's session and forgets its binding (the sandbox was
// deleted). The supervisor sees its stream end.
func (h *Hub) Drop(sandboxID string) {
	h.mu.Lock()
	s := h.sessions[sandboxID]
	if s != nil {
		delete(h.sessions, sandboxID)
	}
	delete(h.bindings, sandboxID)
	h.mu.Unlock()
	if s != nil {
		close(s.superseded)
	}
	if r := h.getRemote(); r != nil {
		ctx, cancel := context.WithTimeout(context.Background(), remoteTimeout)
		defer cancel()
		if err := r.Release(ctx, sandboxID, ""); err != nil {
			h.log.Warn("could not forget the deleted sandbox's session holder", "sandbox_id", sandboxID, "err", err)
		}
	}
}

// Shutdown ends every session (the gateway is stopping; supervisors reconnect to the
// next one).
func (h *Hub) Shutdown() {
	h.mu.Lock()
	sessions := h.sessions
	h.sessions = map[string]*session{}
	h.mu.Unlock()
	for _, s := range sessions {
		close(s.superseded)
	}
}

// SessionStream is the server side of ConnectSupervisor.
type SessionStream = grpc.BidiStreamingServer[openshellv1.SupervisorMessage, openshellv1.GatewayMessage]

// bind applies the binding rules of the package doc to a hello and, when it is
// accepted, registers s as the sandbox's live session. It returns the session s
// supersedes (nil for none). h.mu held.
//
// rh is the sandbox's session record from the other replicas (nil: none); it stands
// for the binding when this replica has none, and its liveness for a live session.
func (h *Hub) bind(s *session, inst Instance, rh *Holder, log *slog.Logger) (*session, error) {
	old := h.sessions[s.sandboxID]
	b := h.bindings[s.sandboxID]
	liveElsewhere := false
	if b == nil && rh != nil {
		b, liveElsewhere = rh.binding(), rh.Live
	}
	if inst.Secret == "" {
		// Without a secret the binding would protect nothing: any holder of the token
		// could bind or reconnect as the instance. Every openshell-sandbox sends one.
		return nil, fmt.Errorf("sandbox %s: supervisor instance %q presents no instance secret (%s call metadata); a session must be bound to the supervisor that booted: update openshell-sandbox: %w",
			s.sandboxID, inst.ID, instancemd.InstanceSecret, ErrRefused)
	}
	switch {
	case b == nil:
	case inst.ID == b.instanceID:
		if !b.secretMatches(inst.Secret) {
			return nil, fmt.Errorf("sandbox %s: a supervisor hello names instance %s, which the sandbox is bound to, but presents the wrong instance secret; only the supervisor that booted may hold the session: %w",
				s.sandboxID, inst.ID, ErrRefused)
		}
		if !keysEqual(b.hostKey, inst.HostKey) {
			return nil, fmt.Errorf("sandbox %s: supervisor instance %s reconnected with another SSH host key (%s, pinned %s); refused: %w",
				s.sandboxID, inst.ID, fingerprint(inst.HostKey), fingerprint(b.hostKey), ErrRefused)
		}
		s.bound = b
		h.bindings[s.sandboxID] = b
		if old != nil {
			log.Info("supervisor instance reconnected; its new session supersedes the old one", "instance_id", inst.ID, "old_session_id", old.id)
		}
	case old != nil || liveElsewhere:
		return nil, fmt.Errorf("sandbox %s: supervisor instance %s holds the sandbox's live session; a second supervisor (instance %q) is refused: %w",
			s.sandboxID, b.instanceID, inst.ID, ErrRefused)
	default:
		log.Warn("the sandbox's bound supervisor instance is gone (no live session); a new instance binds", "old_instance_id", b.instanceID, "instance_id", inst.ID)
	}
	if s.bound == nil {
		s.bound = &binding{instanceID: inst.ID, secret: secretSum(inst.Secret), hostKey: inst.HostKey}
		h.bindings[s.sandboxID] = s.bound
		if inst.HostKey == nil {
			log.Warn("supervisor registered no SSH host key: exec, connect and file transfer to this sandbox will be refused", "instance_id", inst.ID)
		}
	}
	h.sessions[s.sandboxID] = s
	return old, nil
}

func fingerprint(k ssh.PublicKey) string {
	if k == nil {
		return "none"
	}
	return ssh.FingerprintSHA256(k)
}

// Serve runs a session until the stream ends or a newer session for the same sandbox
// supersedes it. The caller has already read and authorized the hello (the token is
// the sandbox's); Serve binds it to the presented instance (see the package doc) and
// returns an ErrRefused, before accepting anything, when the binding refuses it.
func (h *Hub) Serve(stream SessionStream, hello *openshellv1.SupervisorHello, inst Instance) error {
	ctx := stream.Context()
	inst.ID = hello.GetInstanceId()
	s := &session{id: uuid.NewString(), sandboxID: hello.GetSandboxId(), instanceID: inst.ID,
		out: make(chan *openshellv1.GatewayMessage, 16), superseded: make(chan struct{})}
	log := h.log.With("sandbox_id", s.sandboxID, "session_id", s.id)

	h.mu.Lock()
	local := h.bindings[s.sandboxID] != nil
	h.mu.Unlock()
	var rh *Holder
	if !local {
		rh = h.remoteHolder(ctx, s.sandboxID)
	}
	h.mu.Lock()
	old, err := h.bind(s, inst, rh, log)
	h.mu.Unlock()
	if err != nil {
		log.Warn("supervisor session refused", "instance_id", inst.ID, "err", err)
		return err
	}
	if old != nil {
		close(old.superseded)
	}
	if err := stream.Send(&openshellv1.GatewayMessage{Payload: &openshellv1.GatewayMessage_SessionAccepted{
		SessionAccepted: &openshellv1.SessionAccepted{SessionId: s.id, HeartbeatIntervalSecs: uint32(HeartbeatInterval / time.Second)}}}); err != nil {
		h.mu.Lock()
		if h.sessions[s.sandboxID] == s {
			delete(h.sessions, s.sandboxID)
		}
		h.mu.Unlock()
		if old != nil && h.onChange != nil {
			h.onChange(s.sandboxID, s.instanceID, false)
		}
		return err
	}
	log.Info("supervisor session accepted", "instance_id", s.instanceID, "host_key", fingerprint(s.bound.hostKey))
	h.claim(ctx, s, log)
	if h.onChange != nil {
		h.onChange(s.sandboxID, s.instanceID, true)
	}
	defer func() {
		h.mu.Lock()
		current := h.sessions[s.sandboxID] == s
		if current {
			delete(h.sessions, s.sandboxID)
		}
		for ch, p := range h.pending {
			if p.sess == s {
				delete(h.pending, ch)
				p.result <- pairResult{err: fmt.Errorf("sandbox %s: supervisor session ended: %w", s.sandboxID, ErrRelayFailed)}
			}
		}
		h.mu.Unlock()
		log.Info("supervisor session ended", "superseded", !current)
		if current {
			h.release(s, log)
		}
		if current && h.onChange != nil {
			h.onChange(s.sandboxID, s.instanceID, false)
		}
	}()

	recvErr := make(chan error, 1)
	var lastRecv atomic.Int64
	lastRecv.Store(time.Now().UnixNano())
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			lastRecv.Store(time.Now().UnixNano())
			switch p := msg.GetPayload().(type) {
			case *openshellv1.SupervisorMessage_Heartbeat:
			case *openshellv1.SupervisorMessage_RelayOpenResult:
				if !p.RelayOpenResult.GetSuccess() {
					h.failPending(p.RelayOpenResult.GetChannelId(), s, p.RelayOpenResult.GetError())
				}
			case *openshellv1.SupervisorMessage_RelayClose:
				h.failPending(p.RelayClose.GetChannelId(), s, "closed by supervisor: "+p.RelayClose.GetReason())
			case *openshellv1.SupervisorMessage_Hello:
				log.Warn("duplicate hello on an established session ignored")
			}
		}
	}()
	tick := time.NewTicker(HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-s.superseded:
			return fmt.Errorf("sandbox %s: session superseded by a newer supervisor session or the sandbox was deleted", s.sandboxID)
		case <-tick.C:
			// A supervisor that stopped talking (no heartbeat for three intervals) is
			// gone even if TCP has not noticed yet.
			if silent := time.Since(time.Unix(0, lastRecv.Load())); silent > 3*HeartbeatInterval {
				return fmt.Errorf("sandbox %s: supervisor silent for %s; dropping its session", s.sandboxID, silent.Round(time.Second))
			}
			if err := stream.Send(&openshellv1.GatewayMessage{Payload: &openshellv1.GatewayMessage_Heartbeat{Heartbeat: &openshellv1.GatewayHeartbeat{}}}); err != nil {
				return err
			}
		case m := <-s.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

func (h *Hub) failPending(channel string, s *session, reason string) {
	h.mu.Lock()
	p := h.pending[channel]
	if p != nil && p.sess == s {
		delete(h.pending, channel)
	} else {
		p = nil
	}
	h.mu.Unlock()
	if p != nil {
		p.result <- pairResult{err: fmt.Errorf("sandbox %s: relay %s: %s: %w", p.sandboxID, channel, reason, ErrRelayFailed)}
	}
}

// OpenRelay asks the sandbox's supervisor to open target and returns the byte stream
// once the supervisor's RelayStream arrives (or an error after the open timeout or a
// failing relay_open_result). Closing the returned conn ends the relay.
//
// When this gateway is one of several replicas and another replica holds the session,
// the relay is opened there and its bytes piped through (see Remote).
func (h *Hub) OpenRelay(ctx context.Context, sandboxID string, target *openshellv1.RelayOpen) (Conn, error) {
	c, err := h.OpenLocalRelay(ctx, sandboxID, target)
	if !errors.Is(err, ErrNoSession) {
		return c, err
	}
	r := h.getRemote()
	if r == nil {
		return nil, err
	}
	rh, rerr := r.Holder(ctx, sandboxID)
	switch {
	case rerr != nil:
		return nil, fmt.Errorf("sandbox %s: looking for the replica that holds its session: %v: %w", sandboxID, rerr, ErrNoSession)
	case rh == nil || !rh.Live:
		return nil, err
	}
	return r.OpenRelay(ctx, rh, target)
}

// OpenLocalRelay is OpenRelay on this replica's own sessions only (ErrNoSession when
// the session is elsewhere): what a replica does for another one.
func (h *Hub) OpenLocalRelay(ctx context.Context, sandboxID string, target *openshellv1.RelayOpen) (Conn, error) {
	channel := uuid.NewString()
	msg := &openshellv1.RelayOpen{ChannelId: channel, ServiceId: target.GetServiceId()}
	switch t := target.GetTarget().(type) {
	case *openshellv1.RelayOpen_Tcp:
		msg.Target = &openshellv1.RelayOpen_Tcp{Tcp: t.Tcp}
	case *openshellv1.RelayOpen_Transfer:
		msg.Target = &openshellv1.RelayOpen_Transfer{Transfer: t.Transfer}
	case *openshellv1.RelayOpen_Exec:
		msg.Target = &openshellv1.RelayOpen_Exec{Exec: t.Exec}
	default:
		msg.Target = &openshellv1.RelayOpen_Ssh{Ssh: &openshellv1.SshRelayTarget{}}
	}
	p := &pendingRelay{sandboxID: sandboxID, result: make(chan pairResult, 1)}

	h.mu.Lock()
	s := h.sessions[sandboxID]
	if s == nil {
		h.mu.Unlock()
		return nil, fmt.Errorf("sandbox %s: %w; wait until it is Ready (its supervisor connects to the gateway)", sandboxID, ErrNoSession)
	}
	if s.relays >= h.maxRelays {
		h.mu.Unlock()
		return nil, fmt.Errorf("sandbox %s: %d relays open: %w; close some sessions", sandboxID, s.relays, ErrTooManyRelays)
	}
	s.relays++
	p.sess = s
	h.pending[channel] = p
	h.mu.Unlock()

	release := func() {
		h.mu.Lock()
		s.relays--
		h.mu.Unlock()
	}
	drop := func() {
		h.mu.Lock()
		delete(h.pending, channel)
		h.mu.Unlock()
	}

	select {
	case s.out <- &openshellv1.GatewayMessage{Payload: &openshellv1.GatewayMessage_RelayOpen{RelayOpen: msg}}:
	case <-s.superseded:
		drop()
		release()
		return nil, fmt.Errorf("sandbox %s: session was replaced while opening a relay: %w", sandboxID, ErrRelayFailed)
	case <-ctx.Done():
		drop()
		release()
		return nil, ctx.Err()
	}
	timer := time.NewTimer(h.openWait)
	defer timer.Stop()
	select {
	case r := <-p.result:
		if r.err != nil {
			release()
			return nil, r.err
		}
		return &relayConn{pipeEnd: r.conn, release: release, hostKey: s.bound.hostKey}, nil
	case <-timer.C:
		drop()
		// A pairing may have raced the timer.
		select {
		case r := <-p.result:
			if r.err == nil {
				return &relayConn{pipeEnd: r.conn, release: release, hostKey: s.bound.hostKey}, nil
			}
		default:
		}
		release()
		return nil, fmt.Errorf("sandbox %s: supervisor did not open relay %s within %s: %w", sandboxID, channel, h.openWait, ErrRelayFailed)
	case <-ctx.Done():
		drop()
		select {
		case r := <-p.result:
			if r.err == nil {
				r.conn.Close()
			}
		default:
		}
		release()
		return nil, ctx.Err()
	}
}

type relayConn struct {
	*pipeEnd
	once    sync.Once
	release func()
	hostKey ssh.PublicKey
}

// Conn is a relay connection as OpenRelay returns it: a byte stream, plus frame
// passing that moves bulk data through the gateway without copying it (see the
// relay pipe).
type Conn interface {
	io.ReadWriteCloser
	// WriteOwned sends p; the caller hands p over and must not touch it again.
	WriteOwned(p []byte) error
	// ReadChunk returns up to limit bytes in a slice the caller keeps.
	ReadChunk(limit int) ([]byte, error)
	// HostKey is the SSH host key the sandbox's supervisor registered when its
	// session opened (nil: none). An SSH client on the relay must accept only it.
	HostKey() ssh.PublicKey
}

var _ Conn = (*relayConn)(nil)

// Pump joins conn with a caller's stream until the relay ends (the caller's
// half-close ends it), a send fails or ctx is done: each received frame's data (a
// fresh slice) is handed to conn uncopied, and conn's bytes go out in chunks of at
// most ChunkSize. It returns the send error, if any.
func Pump(ctx context.Context, conn Conn, recv func() ([]byte, error), send func([]byte) error) error {
	go func() { // caller → relay
		for {
			d, err := recv()
			if err != nil {
				// The caller half-closes only after closing its end: the relay ends.
				conn.Close()
				return
			}
			if len(d) > 0 {
				if err := conn.WriteOwned(d); err != nil {
					// The relay's far end reads no more. Only this direction stops:
					// what that end sent before (an upload's exit frame, with the
					// sandbox's error) still goes out below, up to the relay's end.
					// The caller's further frames stay unread: its sends wait, then
					// fail once the call ends.
					return
				}
			}
		}
	}()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	for {
		d, err := conn.ReadChunk(ChunkSize)
		if err != nil { // the relay ended (EOF) or was closed
			return nil
		}
		if err := send(d); err != nil {
			return err
		}
	}
}

func (c *relayConn) HostKey() ssh.PublicKey { return c.hostKey }

func (c *relayConn) Close() error {
	err := c.pipeEnd.Close()
	c.once.Do(c.release)
	return err
}

// pairRelay pairs the pending relay channel with the supervisor side that names it
// (authorize and inst checked as ServeRelay says) and returns that side's end of the
// relay pipe. A channel pairs once: a second claim finds it gone.
func (h *Hub) pairRelay(channel string, inst Instance, authorize func(sandboxID string) error) (*pipeEnd, error) {
	h.mu.Lock()
	p := h.pending[channel]
	h.mu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("relay channel %q: %w (it expired or was never requested)", channel, ErrUnknownChannel)
	}
	if err := authorize(p.sandboxID); err != nil {
		return nil, err
	}
	if b := p.sess.bound; inst.ID != p.sess.instanceID || !b.secretMatches(inst.Secret) {
		return nil, fmt.Errorf("sandbox %s: relay %s was asked of supervisor instance %s; a RelayStream from instance %q (or with another instance secret) may not claim it: %w",
			p.sandboxID, channel, p.sess.instanceID, inst.ID, ErrRefused)
	}
	gwSide, relaySide := bufPipe()
	h.mu.Lock()
	if h.pending[channel] != p {
		h.mu.Unlock()
		return nil, fmt.Errorf("relay channel %q: %w (it expired)", channel, ErrUnknownChannel)
	}
	delete(h.pending, channel)
	// Deliver under the lock: OpenRelay's timeout path drops the pending entry under
	// the same lock, so it either sees this result or the entry is gone (buffered, so
	// this never blocks).
	p.result <- pairResult{conn: gwSide}
	h.mu.Unlock()
	return relaySide, nil
}

// RelayStreamServer is the server side of RelayStream.
type RelayStreamServer = grpc.BidiStreamingServer[openshellv1.RelayFrame, openshellv1.RelayFrame]

// ServeRelay pairs a RelayStream (whose init frame the caller has read) with the
// pending relay and pumps bytes until either side closes. authorize is called with the
// sandbox id the channel belongs to before pairing, so a sandbox can only claim its
// own relays; inst (the call's instance metadata) must be the supervisor instance
// whose session the relay was asked on, with its secret.
func (h *Hub) ServeRelay(stream RelayStreamServer, channel string, inst Instance, authorize func(sandboxID string) error) error {
	relaySide, err := h.pairRelay(channel, inst, authorize)
	if err != nil {
		return err
	}
	ctx := stream.Context()

	// stream → pipe
	go func() {
		for {
			f, err := stream.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					// The supervisor half-closed: the gateway side reads EOF after
					// the buffered bytes.
					_ = relaySide.CloseWrite()
					return
				}
				relaySide.Close()
				return
			}
			// Each received frame's data is a fresh slice: queue it as it is.
			if d := f.GetData(); len(d) > 0 {
				if err := relaySide.WriteOwned(d); err != nil {
					relaySide.Close()
					return
				}
			}
		}
	}()
	// pipe → stream
	stop := context.AfterFunc(ctx, func() { relaySide.Close() })
	defer stop()
	for {
		d, err := relaySide.ReadChunk(ChunkSize)
		if err != nil {
			return nil
		}
		if serr := stream.Send(&openshellv1.RelayFrame{Payload: &openshellv1.RelayFrame_Data{Data: d}}); serr != nil {
			relaySide.Close()
			return serr
		}
	}
}

// BulkConn is a supervisor's raw stream for one relay (a bulk stream): a byte
// stream with a half-close of its own each way, so it needs no frames.
type BulkConn interface {
	io.ReadWriteCloser
	CloseWrite() error
	// CloseRead stops reading: the supervisor's further writes fail.
	CloseRead() error
}

// bulkBuf is the size of the buffers a bulk stream's bytes are read into: each is
// handed to the relay pipe as it is (WriteOwned), so the gateway copies a byte once.
const bulkBuf = 256 << 10

// ServeBulk pairs a bulk stream with the pending relay channel (checked as
// ServeRelay checks a RelayStream's), calls accepted (which answers the stream's
// opener) and then moves bytes both ways until both directions end, and closes c.
// It returns the pairing's error (nothing was paired, accepted was not called and c
// is left open for the caller's answer) or accepted's.
//
// A direction whose write fails stops alone; the other goes on to its end. The
// supervisor of an upload that fails sends its exit frame (the error) and closes
// its end while the client's bytes are still coming: writing them fails, and the
// exit frame, already on its way in, must still reach the client.
func (h *Hub) ServeBulk(c BulkConn, channel string, inst Instance, authorize func(sandboxID string) error, accepted func() error) (BulkStats, error) {
	var st BulkStats
	relaySide, err := h.pairRelay(channel, inst, authorize)
	if err != nil {
		return st, err
	}
	defer c.Close()
	defer relaySide.Close()
	if err := accepted(); err != nil {
		return st, err
	}
	up, down := make(chan struct{}), make(chan struct{})
	// refused is closed when the client takes no more of the supervisor's bytes.
	refused := make(chan struct{})
	go func() { // supervisor → relay
		defer close(up)
		b := make([]byte, bulkBuf)
		for {
			n, err := c.Read(b)
			st.Up += int64(n)
			if n > 0 {
				// A full read is handed over as it is; a short one is copied out, so a
				// trickle of small reads does not queue a large buffer each.
				d := b[:n]
				if n >= bulkBuf/4 {
					b = make([]byte, bulkBuf)
				} else {
					d = bytes.Clone(d)
				}
				if werr := relaySide.WriteOwned(d); werr != nil {
					// The client's end is closed: the supervisor's further writes
					// fail (as they did when c was closed here), but what the client
					// sent before its close still goes down to the supervisor.
					_ = c.CloseRead()
					close(refused)
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					_ = relaySide.CloseWrite()
				} else {
					relaySide.Close()
				}
				return
			}
		}
	}()
	go func() { // relay → supervisor
		defer close(down)
		for {
			d, err := relaySide.ReadChunk(ChunkSize)
			if err != nil {
				_ = c.CloseWrite()
				return
			}
			n, err := c.Write(d)
			st.Down += int64(n)
			if err != nil {
				// The supervisor reads no more: the client's further writes fail,
				// and what the supervisor sent before still goes up to the client.
				_ = relaySide.CloseRead()
				return
			}
		}
	}()
	// Once the bytes toward the supervisor have ended (the client's end, or the
	// supervisor's refusal) or the client takes no more, the supervisor hangs up once
	// it has read the end and sent its last bytes. One that does not (or does not read
	// what is left for it) is cut off after bulkDrain rather than holding the stream.
	select {
	case <-down:
	case <-refused:
	}
	if !waitAll(bulkDrain, up, down) {
		c.Close()
		relaySide.Close() // a write into a pipe the client no longer reads ends too
		<-up
		<-down
	}
	return st, nil
}

// waitAll waits until every one of chs is closed, for at most d; false when d ran
// out first.
func waitAll(d time.Duration, chs ...<-chan struct{}) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for _, ch := range chs {
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
	return true
}

// BulkStats counts a bulk stream's bytes: Up from the supervisor, Down to it.
type BulkStats struct{ Up, Down int64 }

// bulkDrain bounds how long a bulk stream stays open after the client's end closed.
const bulkDrain = 30 * time.Second
