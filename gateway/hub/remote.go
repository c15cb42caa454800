package hub

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/openshell/openshell/api/openshellv1"
)

// Several gateway replicas may share one database. A supervisor's session then lives
// on the replica it reached; the others learn of it through a Remote (the session
// records in the store) and reach it through the holder (a peer call that opens the
// relay there and pipes the bytes back). The binding rules of the package doc apply
// across replicas: a replica without a binding of its own takes the recorded one.

// remoteTimeout bounds the store calls the hub makes on behalf of a session.
const remoteTimeout = 5 * time.Second

// Holder is a sandbox's session record as the other replicas see it.
type Holder struct {
	SandboxID  string
	InstanceID string
	// SecretSum is the SHA-256 of the bound instance's secret.
	SecretSum [32]byte
	HostKey   ssh.PublicKey // nil: none registered
	// Replica and PeerAddress name the holding replica ("" in a Claim: this one).
	Replica     string
	PeerAddress string
	// Live: the holder's replica lease has not ended.
	Live bool
}

func (rh *Holder) binding() *binding {
	return &binding{instanceID: rh.InstanceID, secret: rh.SecretSum, hostKey: rh.HostKey}
}

// Remote is the hub's view of the other gateway replicas.
type Remote interface {
	// Holder returns the sandbox's session record (nil when none, live or not).
	Holder(ctx context.Context, sandboxID string) (*Holder, error)
	// Live reports, from a recent snapshot, whether a replica holds a live session
	// of the sandbox (used for the phase; it must not block for long).
	Live(sandboxID string) bool
	// Claim records that this replica now holds the session.
	Claim(ctx context.Context, h Holder) error
	// Release forgets the record when replica holds it ("" = whoever holds it).
	Release(ctx context.Context, sandboxID, replica string) error
	// OpenRelay opens a relay to target through the holding replica.
	OpenRelay(ctx context.Context, h *Holder, target *openshellv1.RelayOpen) (Conn, error)
	// ReplicaID is this replica's id.
	ReplicaID() string
}

type remoteRef struct{ Remote }

// SetRemote makes the hub one of several replicas (call it before serving).
func (h *Hub) SetRemote(r Remote) { h.remote.Store(&remoteRef{r}) }

func (h *Hub) getRemote() Remote {
	if r := h.remote.Load(); r != nil {
		return r.Remote
	}
	return nil
}

// remoteHolder looks a sandbox's record up (nil: no remote, no record, or an error,
// which is logged: a replica that cannot read the store acts on what it knows).
func (h *Hub) remoteHolder(ctx context.Context, sandboxID string) *Holder {
	r := h.getRemote()
	if r == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	rh, err := r.Holder(ctx, sandboxID)
	if err != nil {
		h.log.Warn("could not read the sandbox's session record", "sandbox_id", sandboxID, "err", err)
		return nil
	}
	return rh
}

// claim records s as held here; a failure is logged, not fatal: the session still
// serves this replica, the others see it once the record is written (next session).
func (h *Hub) claim(ctx context.Context, s *session, log *slog.Logger) {
	r := h.getRemote()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	err := r.Claim(ctx, Holder{SandboxID: s.sandboxID, InstanceID: s.instanceID, SecretSum: s.bound.secret, HostKey: s.bound.hostKey})
	if err != nil {
		log.Warn("could not record this replica as the session's holder; other replicas will not reach this sandbox", "err", err)
	}
}

func (h *Hub) release(s *session, log *slog.Logger) {
	r := h.getRemote()
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), remoteTimeout)
	defer cancel()
	if err := r.Release(ctx, s.sandboxID, r.ReplicaID()); err != nil {
		log.Warn("could not forget the ended session's record", "err", err)
	}
}

// RemoteChanged is told by the replica registry that a session on another replica
// came or went: the hub's listener hears it as it would a local change (so phase
// watchers here wake), unless this replica holds the session itself.
func (h *Hub) RemoteChanged(sandboxID, instanceID string, live bool) {
	h.mu.Lock()
	_, local := h.sessions[sandboxID]
	h.mu.Unlock()
	if local || h.onChange == nil {
		return
	}
	h.onChange(sandboxID, instanceID, live)
}

// Claimed lists the sessions this replica holds, as Claim records (for a replica
// that re-records them after its lease row was lost).
func (h *Hub) Claimed() []Holder {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]Holder, 0, len(h.sessions))
	for id, s := range h.sessions {
		out = append(out, Holder{SandboxID: id, InstanceID: s.instanceID, SecretSum: s.bound.secret, HostKey: s.bound.hostKey})
	}
	return out
}

// Frames is a bidirectional stream of byte frames, e.g. a gRPC stream adapted.
type Frames interface {
	Send(p []byte) error
	// Recv returns the next frame's bytes (a fresh slice) or io.EOF at the end.
	Recv() ([]byte, error)
	CloseSend() error
}

// streamLinger bounds how long a closed StreamConn waits for the far side to end
// the stream before cancelling it.
const streamLinger = 5 * time.Second

// StreamConn turns a frame stream into a Conn carrying hostKey. cancel ends the
// stream; it is called once the far side has ended it after Close, or after a short
// linger.
func StreamConn(f Frames, hostKey ssh.PublicKey, cancel func()) Conn {
	local, far := bufPipe()
	recvDone := make(chan struct{})
	go func() { // stream → pipe
		defer close(recvDone)
		for {
			d, err := f.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					_ = far.CloseWrite()
				} else {
					far.Close()
				}
				return
			}
			if len(d) > 0 {
				if err := far.WriteOwned(d); err != nil {
					far.Close()
					return
				}
			}
		}
	}()
	go func() { // pipe → stream
		for {
			d, err := far.ReadChunk(ChunkSize)
			if err != nil {
				_ = f.CloseSend()
				return
			}
			if err := f.Send(d); err != nil {
				// The far side takes no more frames: it ended the stream (io.EOF; what it
				// sent before, and its status, still come through Recv) or the stream
				// broke (Recv fails too and closes the pipe). Only this direction stops:
				// a replica that ran a short exec to its end ends the stream while this
				// side's end of stdin may still be on its way, and the exec's output and
				// exit frame must still be read.
				_ = far.CloseRead()
				return
			}
		}
	}()
	release := func() {
		go func() {
			select {
			case <-recvDone:
			case <-time.After(streamLinger):
			}
			cancel()
		}()
	}
	return &relayConn{pipeEnd: local, release: release, hostKey: hostKey}
}
