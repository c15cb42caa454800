// Package hub keeps the gateway's live supervisor sessions (one ConnectSupervisor
// stream per sandbox) and pairs relay requests with the RelayStream calls the
// supervisors open in answer. The gateway never dials into a sandbox: to reach one it
// asks the supervisor, on its session, to open a relay (OpenRelay), and the supervisor
// calls back with RelayStream carrying the channel id.
package hub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/grpcopts"
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
)

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

	mu       sync.Mutex
	sessions map[string]*session      // by sandbox id
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
		sessions: map[string]*session{}, pending: map[string]*pendingRelay{}}
}

type session struct {
	id, sandboxID, instanceID string
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
	defer h.mu.Unlock()
	_, ok := h.sessions[sandboxID]
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

// Drop ends the sandbox's session (the sandbox was deleted). The supervisor sees
// its stream end.
func (h *Hub) Drop(sandboxID string) {
	h.mu.Lock()
	s := h.sessions[sandboxID]
	if s != nil {
		delete(h.sessions, sandboxID)
	}
	h.mu.Unlock()
	if s != nil {
		close(s.superseded)
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

// Serve runs an accepted session until the stream ends or a newer session for the same
// sandbox supersedes it. The caller has already read and authorized the hello.
func (h *Hub) Serve(stream SessionStream, hello *openshellv1.SupervisorHello) error {
	ctx := stream.Context()
	s := &session{id: uuid.NewString(), sandboxID: hello.GetSandboxId(), instanceID: hello.GetInstanceId(),
		out: make(chan *openshellv1.GatewayMessage, 16), superseded: make(chan struct{})}
	log := h.log.With("sandbox_id", s.sandboxID, "session_id", s.id)

	if err := stream.Send(&openshellv1.GatewayMessage{Payload: &openshellv1.GatewayMessage_SessionAccepted{
		SessionAccepted: &openshellv1.SessionAccepted{SessionId: s.id, HeartbeatIntervalSecs: uint32(HeartbeatInterval / time.Second)}}}); err != nil {
		return err
	}
	h.mu.Lock()
	old := h.sessions[s.sandboxID]
	h.sessions[s.sandboxID] = s
	h.mu.Unlock()
	if old != nil {
		log.Info("supervisor session supersedes an older one", "old_session_id", old.id)
		close(old.superseded)
	}
	log.Info("supervisor session accepted", "instance_id", s.instanceID)
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
func (h *Hub) OpenRelay(ctx context.Context, sandboxID string, target *openshellv1.RelayOpen) (Conn, error) {
	channel := uuid.NewString()
	msg := &openshellv1.RelayOpen{ChannelId: channel, ServiceId: target.GetServiceId()}
	switch t := target.GetTarget().(type) {
	case *openshellv1.RelayOpen_Tcp:
		msg.Target = &openshellv1.RelayOpen_Tcp{Tcp: t.Tcp}
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
		return &relayConn{pipeEnd: r.conn, release: release}, nil
	case <-timer.C:
		drop()
		// A pairing may have raced the timer.
		select {
		case r := <-p.result:
			if r.err == nil {
				return &relayConn{pipeEnd: r.conn, release: release}, nil
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
}

var _ Conn = (*relayConn)(nil)

func (c *relayConn) Close() error {
	err := c.pipeEnd.Close()
	c.once.Do(c.release)
	return err
}

// RelayStreamServer is the server side of RelayStream.
type RelayStreamServer = grpc.BidiStreamingServer[openshellv1.RelayFrame, openshellv1.RelayFrame]

// ServeRelay pairs a RelayStream (whose init frame the caller has read) with the
// pending relay and pumps bytes until either side closes. authorize is called with the
// sandbox id the channel belongs to before pairing, so a sandbox can only claim its
// own relays.
func (h *Hub) ServeRelay(stream RelayStreamServer, channel string, authorize func(sandboxID string) error) error {
	h.mu.Lock()
	p := h.pending[channel]
	h.mu.Unlock()
	if p == nil {
		return fmt.Errorf("relay channel %q: %w (it expired or was never requested)", channel, ErrUnknownChannel)
	}
	if err := authorize(p.sandboxID); err != nil {
		return err
	}
	gwSide, relaySide := bufPipe()
	h.mu.Lock()
	if h.pending[channel] != p {
		h.mu.Unlock()
		return fmt.Errorf("relay channel %q: %w (it expired)", channel, ErrUnknownChannel)
	}
	delete(h.pending, channel)
	// Deliver under the lock: OpenRelay's timeout path drops the pending entry under
	// the same lock, so it either sees this result or the entry is gone (buffered, so
	// this never blocks).
	p.result <- pairResult{conn: gwSide}
	h.mu.Unlock()
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
