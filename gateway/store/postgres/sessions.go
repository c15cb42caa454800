package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/openshell/openshell/gateway/store"
)

var _ store.Sessions = (*Store)(nil)

// RenewReplica implements store.Sessions.
func (s *Store) RenewReplica(ctx context.Context, replicaID, peerAddress string, expiresAtMs int64) (bool, error) {
	if replicaID == "" {
		return false, fmt.Errorf("postgres store: renew replica: empty replica id: %w", store.ErrInvalid)
	}
	// xmax = 0 only for a row this statement inserted (not one it updated).
	var created bool
	err := s.pool.QueryRow(ctx, `INSERT INTO openshell_replicas (replica_id, peer_address, expires_at_ms) VALUES ($1, $2, $3)
		ON CONFLICT (replica_id) DO UPDATE SET peer_address = EXCLUDED.peer_address, expires_at_ms = EXCLUDED.expires_at_ms
		RETURNING (xmax = 0)`, replicaID, peerAddress, expiresAtMs).Scan(&created)
	if err != nil {
		return false, fmt.Errorf("postgres store: renew replica %q: %w", replicaID, err)
	}
	return created, nil
}

// RemoveReplica implements store.Sessions.
func (s *Store) RemoveReplica(ctx context.Context, replicaID string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM openshell_supervisor_sessions WHERE replica_id = $1`, replicaID); err != nil {
			return fmt.Errorf("postgres store: remove replica %q: %w", replicaID, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM openshell_replicas WHERE replica_id = $1`, replicaID); err != nil {
			return fmt.Errorf("postgres store: remove replica %q: %w", replicaID, err)
		}
		return nil
	})
}

// PruneReplicas implements store.Sessions.
func (s *Store) PruneReplicas(ctx context.Context, beforeMs int64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM openshell_supervisor_sessions WHERE replica_id IN
			(SELECT replica_id FROM openshell_replicas WHERE expires_at_ms < $1)`, beforeMs); err != nil {
			return fmt.Errorf("postgres store: prune replicas: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM openshell_replicas WHERE expires_at_ms < $1`, beforeMs); err != nil {
			return fmt.Errorf("postgres store: prune replicas: %w", err)
		}
		return nil
	})
}

// PutSession implements store.Sessions.
func (s *Store) PutSession(ctx context.Context, h store.SessionHolder) error {
	if err := h.Validate(); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO openshell_supervisor_sessions (sandbox_id, replica_id, instance_id, secret_sum, host_key)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (sandbox_id) DO UPDATE SET replica_id = EXCLUDED.replica_id, instance_id = EXCLUDED.instance_id,
			secret_sum = EXCLUDED.secret_sum, host_key = EXCLUDED.host_key`,
		h.SandboxID, h.ReplicaID, h.InstanceID, h.SecretSum, h.HostKey)
	if err != nil {
		return fmt.Errorf("postgres store: record the session holder of sandbox %q: %w", h.SandboxID, err)
	}
	return nil
}

// DeleteSession implements store.Sessions.
func (s *Store) DeleteSession(ctx context.Context, sandboxID, replicaID string) error {
	q, args := `DELETE FROM openshell_supervisor_sessions WHERE sandbox_id = $1`, []any{sandboxID}
	if replicaID != "" {
		q += ` AND replica_id = $2`
		args = append(args, replicaID)
	}
	if _, err := s.pool.Exec(ctx, q, args...); err != nil {
		return fmt.Errorf("postgres store: forget the session holder of sandbox %q: %w", sandboxID, err)
	}
	return nil
}

const sessionColumns = `s.sandbox_id, s.replica_id, COALESCE(r.peer_address, ''), s.instance_id, s.secret_sum, s.host_key, COALESCE(r.expires_at_ms, 0)`

const sessionJoin = ` FROM openshell_supervisor_sessions s LEFT JOIN openshell_replicas r ON r.replica_id = s.replica_id`

func scanSession(row pgx.Row) (store.SessionHolder, error) {
	var h store.SessionHolder
	err := row.Scan(&h.SandboxID, &h.ReplicaID, &h.PeerAddress, &h.InstanceID, &h.SecretSum, &h.HostKey, &h.LeaseExpiresAtMs)
	return h, err
}

// GetSession implements store.Sessions.
func (s *Store) GetSession(ctx context.Context, sandboxID string) (store.SessionHolder, error) {
	h, err := scanSession(s.pool.QueryRow(ctx, `SELECT `+sessionColumns+sessionJoin+` WHERE s.sandbox_id = $1`, sandboxID))
	if errors.Is(err, pgx.ErrNoRows) {
		return h, store.NotFound("supervisor session", sandboxID)
	}
	if err != nil {
		return h, fmt.Errorf("postgres store: read the session holder of sandbox %q: %w", sandboxID, err)
	}
	return h, nil
}

// ListSessions implements store.Sessions.
func (s *Store) ListSessions(ctx context.Context, nowMs int64) ([]store.SessionHolder, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+sessionColumns+sessionJoin+` WHERE r.expires_at_ms > $1 ORDER BY s.sandbox_id`, nowMs)
	if err != nil {
		return nil, fmt.Errorf("postgres store: list session holders: %w", err)
	}
	defer rows.Close()
	var out []store.SessionHolder
	for rows.Next() {
		h, err := scanSession(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres store: list session holders: %w", err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}
