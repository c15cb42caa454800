// Package postgres is the store backend for several gateway replicas sharing one
// PostgreSQL database. Compare-and-swap happens in SQL (UPDATE … WHERE
// resource_version = $n), so replicas need no coordination beyond the database, and
// label selectors are evaluated by PostgreSQL (jsonb containment) so paging is exact.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/openshell/openshell/gateway/store"
)

// schemaVersion is recorded in openshell_store_meta; bump it with a migration.
// 2: the replica lease and supervisor-session holder tables (CREATE … IF NOT EXISTS,
// so a version-1 database migrates by running the schema again).
const schemaVersion = 2

// schemaLockID is the advisory lock key that serializes schema setup when several
// replicas start at once (CREATE … IF NOT EXISTS alone races in PostgreSQL).
const schemaLockID = 0x6f70656e7368 // "opensh"

const schema = `
CREATE TABLE IF NOT EXISTS openshell_store_meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS openshell_objects (
	kind             TEXT   NOT NULL,
	id               TEXT   NOT NULL,
	workspace        TEXT   NOT NULL,
	name             TEXT   NOT NULL,
	labels           JSONB  NOT NULL DEFAULT '{}',
	resource_version BIGINT NOT NULL,
	created_at_ms    BIGINT NOT NULL,
	data             BYTEA,
	PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS openshell_objects_by_created ON openshell_objects (kind, workspace, created_at_ms, id);
CREATE INDEX IF NOT EXISTS openshell_objects_by_kind_created ON openshell_objects (kind, created_at_ms, id);
CREATE INDEX IF NOT EXISTS openshell_objects_labels ON openshell_objects USING gin (labels jsonb_path_ops);
-- Created last: on a table without statistics the planner breaks cost ties in favour of
-- the newest index, and GetByName must use this one, not a prefix of objects_by_created.
CREATE UNIQUE INDEX IF NOT EXISTS openshell_objects_by_name ON openshell_objects (kind, workspace, name);
CREATE TABLE IF NOT EXISTS openshell_replicas (
	replica_id    TEXT   PRIMARY KEY,
	peer_address  TEXT   NOT NULL,
	expires_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS openshell_supervisor_sessions (
	sandbox_id  TEXT PRIMARY KEY,
	replica_id  TEXT NOT NULL,
	instance_id TEXT NOT NULL,
	secret_sum  BYTEA,
	host_key    BYTEA
);
CREATE INDEX IF NOT EXISTS openshell_supervisor_sessions_by_replica ON openshell_supervisor_sessions (replica_id);
`

// Store is the PostgreSQL backend.
type Store struct {
	pool *pgxpool.Pool
}

var _ store.Store = (*Store)(nil)

// Open connects to dsn (URL "postgres://user@host:port/db?…" or "key=value …" form),
// checks the connection and creates the schema if missing.
func Open(ctx context.Context, dsn string) (_ *Store, retErr error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors can quote the DSN, password included: do not wrap them.
		return nil, fmt.Errorf("postgres store: invalid DSN (want postgres://user@host:port/db or key=value form): %w", store.ErrInvalid)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres store: connect to %s: %w", describe(cfg), err)
	}
	s := &Store{pool: pool}
	defer func() {
		if retErr != nil {
			pool.Close()
		}
	}()
	if err := pool.Ping(ctx); err != nil {
		return nil, fmt.Errorf("postgres store: connect to %s: %w", describe(cfg), err)
	}
	if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func describe(cfg *pgxpool.Config) string {
	c := cfg.ConnConfig
	return fmt.Sprintf("database %q on %s:%d as %q", c.Database, c.Host, c.Port, c.User)
}

func (s *Store) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLockID)); err != nil {
			return fmt.Errorf("postgres store: lock schema: %w", err)
		}
		if _, err := tx.Exec(ctx, schema); err != nil {
			return fmt.Errorf("postgres store: create schema (does the user have CREATE on the database?): %w", err)
		}
		var v string
		err := tx.QueryRow(ctx, `SELECT value FROM openshell_store_meta WHERE key = 'schema_version'`).Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			_, err = tx.Exec(ctx, `INSERT INTO openshell_store_meta (key, value) VALUES ('schema_version', $1)`, fmt.Sprint(schemaVersion))
			if err != nil {
				return fmt.Errorf("postgres store: record schema version: %w", err)
			}
		case err != nil:
			return fmt.Errorf("postgres store: read schema version: %w", err)
		case v == "1":
			// Version 1 lacked only the tables the schema above just created.
			if _, err := tx.Exec(ctx, `UPDATE openshell_store_meta SET value = $1 WHERE key = 'schema_version'`, fmt.Sprint(schemaVersion)); err != nil {
				return fmt.Errorf("postgres store: record schema version: %w", err)
			}
		case v != fmt.Sprint(schemaVersion):
			return fmt.Errorf("postgres store: database has schema version %s, this gateway knows %d; run the same openshell version on every replica", v, schemaVersion)
		}
		return nil
	})
}

// Close closes the connection pool, waiting for queries in flight.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func encodeLabels(l map[string]string) (string, error) {
	if len(l) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(l)
	return string(b), err
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, o *store.Object) (*store.Object, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	out := o.Clone()
	out.ResourceVersion = 1
	if out.CreatedAtMs == 0 {
		out.CreatedAtMs = time.Now().UnixMilli()
	}
	labels, err := encodeLabels(out.Labels)
	if err != nil {
		return nil, fmt.Errorf("postgres store: encode labels of %s %q: %w", o.Kind, o.ID, err)
	}
	_, err = s.pool.Exec(ctx,
		`INSERT INTO openshell_objects (kind, id, workspace, name, labels, resource_version, created_at_ms, data)
		 VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)`,
		out.Kind, out.ID, out.Workspace, out.Name, labels, int64(out.ResourceVersion), out.CreatedAtMs, out.Data)
	if isUniqueViolation(err) {
		return nil, store.AlreadyExists(o)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres store: create %s %q: %w", o.Kind, o.ID, err)
	}
	return out, nil
}

const columns = `kind, id, workspace, name, labels::text, resource_version, created_at_ms, data`

func scan(row pgx.Row) (*store.Object, error) {
	var (
		o      store.Object
		labels string
		rv     int64
	)
	if err := row.Scan(&o.Kind, &o.ID, &o.Workspace, &o.Name, &labels, &rv, &o.CreatedAtMs, &o.Data); err != nil {
		return nil, err
	}
	o.ResourceVersion = uint64(rv)
	if labels != "" && labels != "{}" {
		if err := json.Unmarshal([]byte(labels), &o.Labels); err != nil {
			return nil, fmt.Errorf("decode labels of %s %q: %w", o.Kind, o.ID, err)
		}
	}
	return &o, nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, kind, id string) (*store.Object, error) {
	o, err := scan(s.pool.QueryRow(ctx, `SELECT `+columns+` FROM openshell_objects WHERE kind = $1 AND id = $2`, kind, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.NotFound(kind, id)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres store: get %s %q: %w", kind, id, err)
	}
	return o, nil
}

// GetByName implements store.Store.
func (s *Store) GetByName(ctx context.Context, kind, workspace, name string) (*store.Object, error) {
	o, err := scan(s.pool.QueryRow(ctx,
		`SELECT `+columns+` FROM openshell_objects WHERE kind = $1 AND workspace = $2 AND name = $3`, kind, workspace, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.NotFoundName(kind, workspace, name)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres store: get %s named %q in workspace %q: %w", kind, name, workspace, err)
	}
	return o, nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, kind string, opts store.ListOptions) ([]*store.Object, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	var q strings.Builder
	args := []any{kind}
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	q.WriteString(`SELECT ` + columns + ` FROM openshell_objects WHERE kind = $1`)
	if !opts.AllWorkspaces {
		q.WriteString(` AND workspace = ` + arg(opts.Workspace))
	}
	if len(opts.Selector) > 0 {
		sel, err := json.Marshal(opts.Selector)
		if err != nil {
			return nil, fmt.Errorf("postgres store: encode selector: %w", err)
		}
		q.WriteString(` AND labels @> ` + arg(string(sel)) + `::jsonb`)
	}
	q.WriteString(` ORDER BY created_at_ms, id`)
	if opts.Limit > 0 {
		q.WriteString(` LIMIT ` + arg(opts.Limit))
	}
	if opts.Offset > 0 {
		q.WriteString(` OFFSET ` + arg(opts.Offset))
	}
	rows, err := s.pool.Query(ctx, q.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("postgres store: list %s: %w", kind, err)
	}
	defer rows.Close()
	var out []*store.Object
	for rows.Next() {
		o, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres store: list %s: %w", kind, err)
		}
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres store: list %s: %w", kind, err)
	}
	return out, nil
}

// Update implements store.Store. Under READ COMMITTED a concurrent updater blocks on
// the row lock and then re-checks resource_version against the committed row, so
// exactly one writer per version matches.
func (s *Store) Update(ctx context.Context, o *store.Object) (*store.Object, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	out := o.Clone()
	labels, err := encodeLabels(out.Labels)
	if err != nil {
		return nil, fmt.Errorf("postgres store: encode labels of %s %q: %w", o.Kind, o.ID, err)
	}
	var rv int64
	err = s.pool.QueryRow(ctx,
		`UPDATE openshell_objects
		 SET workspace = $1, name = $2, labels = $3::jsonb, data = $4, resource_version = resource_version + 1
		 WHERE kind = $5 AND id = $6 AND resource_version = $7
		 RETURNING resource_version, created_at_ms`,
		out.Workspace, out.Name, labels, out.Data, out.Kind, out.ID, int64(o.ResourceVersion)).Scan(&rv, &out.CreatedAtMs)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, s.missOrConflict(ctx, o.Kind, o.ID, o.ResourceVersion)
	case isUniqueViolation(err):
		return nil, store.AlreadyExists(o)
	case err != nil:
		return nil, fmt.Errorf("postgres store: update %s %q: %w", o.Kind, o.ID, err)
	}
	out.ResourceVersion = uint64(rv)
	return out, nil
}

// missOrConflict explains why a conditional write matched no row.
func (s *Store) missOrConflict(ctx context.Context, kind, id string, have uint64) error {
	var stored int64
	err := s.pool.QueryRow(ctx, `SELECT resource_version FROM openshell_objects WHERE kind = $1 AND id = $2`, kind, id).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.NotFound(kind, id)
	}
	if err != nil {
		return fmt.Errorf("postgres store: %s %q: read version after a failed conditional write: %w", kind, id, err)
	}
	return store.Conflict(kind, id, have, uint64(stored))
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, kind, id string, resourceVersion uint64) error {
	q := `DELETE FROM openshell_objects WHERE kind = $1 AND id = $2`
	args := []any{kind, id}
	if resourceVersion != 0 {
		q += ` AND resource_version = $3`
		args = append(args, int64(resourceVersion))
	}
	tag, err := s.pool.Exec(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("postgres store: delete %s %q: %w", kind, id, err)
	}
	if tag.RowsAffected() == 0 {
		return s.missOrConflict(ctx, kind, id, resourceVersion)
	}
	return nil
}
