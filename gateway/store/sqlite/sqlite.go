// Package sqlite is the embedded store backend: one SQLite file (pure-Go driver, no
// cgo) in WAL mode, for a single gateway process. Writes go through one connection,
// so goroutines never race for SQLite's write lock inside this process; reads use a
// separate pool and run concurrently with writes (WAL). Other processes opening the
// same file wait on the busy timeout.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/openshell/openshell/gateway/store"
)

// schemaVersion is stored in PRAGMA user_version; bump it with a migration.
// 2: the replica lease and supervisor-session holder tables (CREATE … IF NOT EXISTS,
// so a version-1 database migrates by running the schema again).
const schemaVersion = 2

// busyTimeout bounds how long a statement waits for another process's lock.
const busyTimeout = 10 * time.Second

const schema = `
CREATE TABLE IF NOT EXISTS objects (
	kind             TEXT    NOT NULL,
	id               TEXT    NOT NULL,
	workspace        TEXT    NOT NULL,
	name             TEXT    NOT NULL,
	labels           TEXT    NOT NULL DEFAULT '{}',
	resource_version INTEGER NOT NULL,
	created_at_ms    INTEGER NOT NULL,
	data             BLOB,
	PRIMARY KEY (kind, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_by_name ON objects (kind, workspace, name);
CREATE INDEX IF NOT EXISTS objects_by_created ON objects (kind, workspace, created_at_ms, id);
CREATE INDEX IF NOT EXISTS objects_by_kind_created ON objects (kind, created_at_ms, id);
CREATE TABLE IF NOT EXISTS replicas (
	replica_id    TEXT    PRIMARY KEY,
	peer_address  TEXT    NOT NULL,
	expires_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS supervisor_sessions (
	sandbox_id  TEXT PRIMARY KEY,
	replica_id  TEXT NOT NULL,
	instance_id TEXT NOT NULL,
	secret_sum  BLOB,
	host_key    BLOB
);
CREATE INDEX IF NOT EXISTS supervisor_sessions_by_replica ON supervisor_sessions (replica_id);
`

// Store is the SQLite backend.
type Store struct {
	path string
	w    *sql.DB // exactly one connection: all writes
	r    *sql.DB // read-only pool
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path. The file is created with mode
// 0600 and its parent directory with 0700, because the store holds sandbox specs and
// provider credentials; a file that exists with looser permissions is tightened.
func Open(ctx context.Context, path string) (_ *Store, retErr error) {
	if path == "" {
		return nil, fmt.Errorf("sqlite store: empty database path; pass one or use store.DefaultPath(): %w", store.ErrInvalid)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite store: resolve %q: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("sqlite store: create directory for %s: %w", abs, err)
	}
	// Create the file ourselves: SQLite would use 0644, and it gives its -wal and -shm
	// files the main file's permissions.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite store: open %s: %w", abs, err)
	}
	st, err := f.Stat()
	if err == nil && st.Mode().Perm()&0o077 != 0 {
		err = f.Chmod(0o600)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite store: set mode 0600 on %s: %w", abs, err)
	}

	s := &Store{path: abs}
	defer func() {
		if retErr != nil {
			_ = s.Close()
		}
	}()
	if s.w, err = sql.Open("sqlite", dsn(abs, false)); err != nil {
		return nil, fmt.Errorf("sqlite store: open %s: %w", abs, err)
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetConnMaxIdleTime(0)
	if s.r, err = sql.Open("sqlite", dsn(abs, true)); err != nil {
		return nil, fmt.Errorf("sqlite store: open %s: %w", abs, err)
	}
	s.r.SetMaxOpenConns(max(4, runtime.GOMAXPROCS(0)))
	if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// NORMAL is durable across process crashes in WAL mode; only a power loss can
		// drop the last transactions, which the reconciler tolerates.
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Set("_txlock", "immediate")
	}
	u := url.URL{Scheme: "file", Path: path, RawQuery: q.Encode()}
	return u.String()
}

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.w.BeginTx(ctx, nil) // immediate: serializes concurrent first opens
	if err != nil {
		return fmt.Errorf("sqlite store: %s: begin schema transaction: %w", s.path, err)
	}
	defer func() { _ = tx.Rollback() }()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("sqlite store: %s: read schema version (is it an SQLite database?): %w", s.path, err)
	}
	if v > schemaVersion {
		return fmt.Errorf("sqlite store: %s has schema version %d, newer than this gateway's %d; upgrade openshell", s.path, v, schemaVersion)
	}
	if _, err := tx.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("sqlite store: %s: create schema: %w", s.path, err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion)); err != nil {
		return fmt.Errorf("sqlite store: %s: set schema version: %w", s.path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite store: %s: commit schema: %w", s.path, err)
	}
	return nil
}

// Path returns the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Close closes both connection pools.
func (s *Store) Close() error {
	var errs []error
	for _, db := range []*sql.DB{s.r, s.w} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	return errors.Join(errs...)
}

func encodeLabels(l map[string]string) (string, error) {
	if len(l) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(l)
	return string(b), err
}

func isUniqueViolation(err error) bool {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	c := se.Code()
	return c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || c == sqlite3.SQLITE_CONSTRAINT_UNIQUE
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
		return nil, fmt.Errorf("sqlite store: encode labels of %s %q: %w", o.Kind, o.ID, err)
	}
	_, err = s.w.ExecContext(ctx,
		`INSERT INTO objects (kind, id, workspace, name, labels, resource_version, created_at_ms, data)
		 VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		out.Kind, out.ID, out.Workspace, out.Name, labels, out.ResourceVersion, out.CreatedAtMs, out.Data)
	if isUniqueViolation(err) {
		return nil, store.AlreadyExists(o)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite store: create %s %q: %w", o.Kind, o.ID, err)
	}
	return out, nil
}

const columns = `kind, id, workspace, name, labels, resource_version, created_at_ms, data`

type scanner interface{ Scan(dest ...any) error }

func scan(row scanner) (*store.Object, error) {
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
	o, err := scan(s.r.QueryRowContext(ctx, `SELECT `+columns+` FROM objects WHERE kind = ? AND id = ?`, kind, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.NotFound(kind, id)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite store: get %s %q: %w", kind, id, err)
	}
	return o, nil
}

// GetByName implements store.Store.
func (s *Store) GetByName(ctx context.Context, kind, workspace, name string) (*store.Object, error) {
	o, err := scan(s.r.QueryRowContext(ctx,
		`SELECT `+columns+` FROM objects WHERE kind = ? AND workspace = ? AND name = ?`, kind, workspace, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.NotFoundName(kind, workspace, name)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite store: get %s named %q in workspace %q: %w", kind, name, workspace, err)
	}
	return o, nil
}

// List implements store.Store. Without a selector SQLite pages; with one, rows are
// filtered here and paged after filtering.
func (s *Store) List(ctx context.Context, kind string, opts store.ListOptions) ([]*store.Object, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	var q strings.Builder
	args := []any{kind}
	q.WriteString(`SELECT ` + columns + ` FROM objects WHERE kind = ?`)
	if !opts.AllWorkspaces {
		q.WriteString(` AND workspace = ?`)
		args = append(args, opts.Workspace)
	}
	q.WriteString(` ORDER BY created_at_ms, id`)
	filter := len(opts.Selector) > 0
	if !filter && (opts.Limit > 0 || opts.Offset > 0) {
		limit := int64(-1) // SQLite: no limit
		if opts.Limit > 0 {
			limit = int64(opts.Limit)
		}
		q.WriteString(` LIMIT ? OFFSET ?`)
		args = append(args, limit, opts.Offset)
	}
	rows, err := s.r.QueryContext(ctx, q.String(), args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite store: list %s: %w", kind, err)
	}
	defer rows.Close()
	var out []*store.Object
	skip := opts.Offset
	for rows.Next() {
		o, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite store: list %s: %w", kind, err)
		}
		if filter {
			if !store.Matches(o.Labels, opts.Selector) {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
		}
		out = append(out, o)
		if filter && opts.Limit > 0 && len(out) == opts.Limit {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite store: list %s: %w", kind, err)
	}
	return out, nil
}

// Update implements store.Store: the version check and the write are one statement.
func (s *Store) Update(ctx context.Context, o *store.Object) (*store.Object, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	out := o.Clone()
	labels, err := encodeLabels(out.Labels)
	if err != nil {
		return nil, fmt.Errorf("sqlite store: encode labels of %s %q: %w", o.Kind, o.ID, err)
	}
	var rv int64
	err = s.w.QueryRowContext(ctx,
		`UPDATE objects SET workspace = ?, name = ?, labels = ?, data = ?, resource_version = resource_version + 1
		 WHERE kind = ? AND id = ? AND resource_version = ?
		 RETURNING resource_version, created_at_ms`,
		out.Workspace, out.Name, labels, out.Data, out.Kind, out.ID, int64(o.ResourceVersion)).Scan(&rv, &out.CreatedAtMs)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, s.missOrConflict(ctx, o.Kind, o.ID, o.ResourceVersion)
	case isUniqueViolation(err):
		return nil, store.AlreadyExists(o)
	case err != nil:
		return nil, fmt.Errorf("sqlite store: update %s %q: %w", o.Kind, o.ID, err)
	}
	out.ResourceVersion = uint64(rv)
	return out, nil
}

// missOrConflict explains why a conditional write matched no row.
func (s *Store) missOrConflict(ctx context.Context, kind, id string, have uint64) error {
	var stored int64
	err := s.w.QueryRowContext(ctx, `SELECT resource_version FROM objects WHERE kind = ? AND id = ?`, kind, id).Scan(&stored)
	if errors.Is(err, sql.ErrNoRows) {
		return store.NotFound(kind, id)
	}
	if err != nil {
		return fmt.Errorf("sqlite store: %s %q: read version after a failed conditional write: %w", kind, id, err)
	}
	return store.Conflict(kind, id, have, uint64(stored))
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, kind, id string, resourceVersion uint64) error {
	q := `DELETE FROM objects WHERE kind = ? AND id = ?`
	args := []any{kind, id}
	if resourceVersion != 0 {
		q += ` AND resource_version = ?`
		args = append(args, int64(resourceVersion))
	}
	res, err := s.w.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("sqlite store: delete %s %q: %w", kind, id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("sqlite store: delete %s %q: %w", kind, id, err)
	} else if n == 0 {
		return s.missOrConflict(ctx, kind, id, resourceVersion)
	}
	return nil
}
