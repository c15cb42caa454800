package store

import (
	"context"
	"fmt"
	"time"
)

// SessionHolder records which gateway replica holds a sandbox's live supervisor
// session, so that the other replicas sharing the database can derive the sandbox's
// phase and route session-bound work (exec, forwards, transfers) to that replica.
type SessionHolder struct {
	SandboxID string
	// ReplicaID is the holding replica; PeerAddress is where the others reach it
	// (filled from the replica's lease when read).
	ReplicaID   string
	PeerAddress string
	// InstanceID, SecretSum and HostKey are the supervisor instance the sandbox is
	// bound to (see gateway/hub): another replica applies the same binding rules when
	// that supervisor reconnects to it. SecretSum is the SHA-256 of the instance
	// secret, never the secret; HostKey is the SSH wire format (nil: none).
	InstanceID string
	SecretSum  []byte
	HostKey    []byte
	// LeaseExpiresAtMs is the holding replica's lease end (filled when read).
	LeaseExpiresAtMs int64
}

// Live reports whether the holder's replica lease runs past now.
func (h SessionHolder) Live(now time.Time) bool { return h.LeaseExpiresAtMs > now.UnixMilli() }

// Validate checks the fields a backend needs before PutSession.
func (h SessionHolder) Validate() error {
	switch {
	case h.SandboxID == "":
		return fmt.Errorf("store: session holder has an empty SandboxID: %w", ErrInvalid)
	case h.ReplicaID == "":
		return fmt.Errorf("store: session holder of sandbox %q has an empty ReplicaID; set the gateway's replica_id: %w", h.SandboxID, ErrInvalid)
	}
	return nil
}

// Sessions is implemented by backends that record supervisor-session holders for
// several gateway replicas on one database (both sqlite and postgres do). Times are
// Unix milliseconds from the caller's clock: replicas are expected to keep their
// clocks in step (NTP) to well within a lease.
type Sessions interface {
	// RenewReplica records or refreshes a replica's lease: its peer address and the
	// time after which its sessions count as gone unless it renews again. created
	// says the replica had no lease row (first start, or pruned after a long stall).
	RenewReplica(ctx context.Context, replicaID, peerAddress string, expiresAtMs int64) (created bool, err error)
	// RemoveReplica deletes a replica's lease and every session it holds (a clean
	// shutdown: its supervisors reconnect elsewhere).
	RemoveReplica(ctx context.Context, replicaID string) error
	// PruneReplicas deletes the leases (and their sessions) that ended before
	// beforeMs.
	PruneReplicas(ctx context.Context, beforeMs int64) error
	// PutSession records h.ReplicaID as the holder of h.SandboxID's session,
	// replacing any other holder.
	PutSession(ctx context.Context, h SessionHolder) error
	// DeleteSession removes the sandbox's record if replicaID holds it; replicaID ""
	// removes it whoever holds it (the sandbox was deleted).
	DeleteSession(ctx context.Context, sandboxID, replicaID string) error
	// GetSession returns the sandbox's record with its replica's lease, live or not
	// (ErrNotFound when there is none).
	GetSession(ctx context.Context, sandboxID string) (SessionHolder, error)
	// ListSessions returns every record whose replica's lease ends after nowMs.
	ListSessions(ctx context.Context, nowMs int64) ([]SessionHolder, error)
}
