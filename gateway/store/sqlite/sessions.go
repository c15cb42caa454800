package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/openshell/openshell/gateway/store"
)

var _ store.Sessions = (*Store)(nil)

// RenewReplica implements store.Sessions.
func (s *Store) RenewReplica(ctx context.Context, replicaID, peerAddress string, expiresAtMs int64) (bool, error) {
	if replicaID == "" {
		return false, fmt.Errorf("sqlite store: renew replica: empty replica id: %w", store.ErrInvalid)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("sqlite store: renew replica %q: %w", replicaID, err)
	}
	defer func() { _ = tx.Rollback() }()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM replicas WHERE replica_id = ?`, replicaID).Scan(&n); err != nil {
		return false, fmt.Errorf("sqlite store: renew replica %q: %w", replicaID, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO replicas (replica_id, peer_address, expires_at_ms) VALUES (?, ?, ?)
		ON CONFLICT (replica_id) DO UPDATE SET peer_address = excluded.peer_address, expires_at_ms = excluded.expires_at_ms`,
		replicaID, peerAddress, expiresAtMs); err != nil {
		return false, fmt.Errorf("sqlite store: renew replica %q: %w", replicaID, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("sqlite store: renew replica %q: %w", replicaID, err)
	}
	return n == 0, nil
}

// RemoveReplica implements store.Sessions.
func (s *Store) RemoveReplica(ctx context.Context, replicaID string) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite store: remove replica %q: %w", replicaID, err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `DELETE FROM supervisor_sessions WHERE replica_id = ?`, replicaID); err != nil {
		return fmt.Errorf("sqlite store: remove replica %q: %w", replicaID, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM replicas WHERE replica_id = ?`, replicaID); err != nil {
		return fmt.Errorf("sqlite store: remove replica %q: %w", replicaID, err)
	}
	return tx.Commit()
}

// PruneReplicas implements store.Sessions.
func (s *Store) PruneReplicas(ctx context.Context, beforeMs int64) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite store: prune replicas: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `DELETE FROM supervisor_sessions WHERE replica_id IN
		(SELECT replica_id FROM replicas WHERE expires_at_ms < ?)`, beforeMs); err != nil {
		return fmt.Errorf("sqlite store: prune replicas: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM replicas WHERE expires_at_ms < ?`, beforeMs); err != nil {
		return fmt.Errorf("sqlite store: prune replicas: %w", err)
	}
	return tx.Commit()
}

// PutSession implements store.Sessions.
func (s *Store) PutSession(ctx context.Context, h store.SessionHolder) error {
	if err := h.Validate(); err != nil {
		return err
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO supervisor_sessions (sandbox_id, replica_id, instance_id, secret_sum, host_key)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (sandbox_id) DO UPDATE SET replica_id = excluded.replica_id, instance_id = excluded.instance_id,
			secret_sum = excluded.secret_sum, host_key = excluded.host_key`,
		h.SandboxID, h.ReplicaID, h.InstanceID, h.SecretSum, h.HostKey)
	if err != nil {
		return fmt.Errorf("sqlite store: record the session holder of sandbox %q: %w", h.SandboxID, err)
	}
	return nil
}

// DeleteSession implements store.Sessions.
func (s *Store) DeleteSession(ctx context.Context, sandboxID, replicaID string) error {
	q, args := `DELETE FROM supervisor_sessions WHERE sandbox_id = ?`, []any{sandboxID}
	if replicaID != "" {
		q += ` AND replica_id = ?`
		args = append(args, replicaID)
	}
	if _, err := s.w.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("sqlite store: forget the session holder of sandbox %q: %w", sandboxID, err)
	}
	return nil
}

const sessionColumns = `s.sandbox_id, s.replica_id, COALESCE(r.peer_address, ''), s.instance_id, s.secret_sum, s.host_key, COALESCE(r.expires_at_ms, 0)`

const sessionJoin = ` FROM supervisor_sessions s LEFT JOIN replicas r ON r.replica_id = s.replica_id`

func scanSession(row scanner) (store.SessionHolder, error) {
	var h store.SessionHolder
	err := row.Scan(&h.SandboxID, &h.ReplicaID, &h.PeerAddress, &h.InstanceID, &h.SecretSum, &h.HostKey, &h.LeaseExpiresAtMs)
	return h, err
}

// GetSession implements store.Sessions.
func (s *Store) GetSession(ctx context.Context, sandboxID string) (store.SessionHolder, error) {
	h, err := scanSession(s.r.QueryRowContext(ctx, `SELECT `+sessionColumns+sessionJoin+` WHERE s.sandbox_id = ?`, sandboxID))
	if errors.Is(err, sql.ErrNoRows) {
		return h, store.NotFound("supervisor session", sandboxID)
	}
	if err != nil {
		return h, fmt.Errorf("sqlite store: read the session holder of sandbox %q: %w", sandboxID, err)
	}
	return h, nil
}

// ListSessions implements store.Sessions.
func (s *Store) ListSessions(ctx context.Context, nowMs int64) ([]store.SessionHolder, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+sessionColumns+sessionJoin+` WHERE r.expires_at_ms > ? ORDER BY s.sandbox_id`, nowMs)
	if err != nil {
		return nil, fmt.Errorf("sqlite store: list session holders: %w", err)
	}
	defer rows.Close()
	var out []store.SessionHolder
	for rows.Next() {
		h, err := scanSession(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite store: list session holders: %w", err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}
