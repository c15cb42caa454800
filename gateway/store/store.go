// Package store is the gateway's resource store: a small, generic table of objects
// (sandboxes, providers, ssh sessions, policies, …) keyed by kind and id, unique by
// (kind, workspace, name), with an opaque payload and optimistic concurrency through a
// resource version. Backends live in subpackages: sqlite (embedded default, one
// gateway) and postgres (several gateway replicas sharing one database). Every backend
// passes the same conformance suite, storetest.Run.
package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
)

// Sentinel errors. Backends wrap them with the object's kind and id; callers test with
// errors.Is and convert to API status codes only at the API edge.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict means the caller's ResourceVersion is stale: re-read and retry.
	ErrConflict = errors.New("resource version conflict")
	// ErrInvalid means the request itself is malformed (missing kind, id or name, bad
	// list options); retrying will not help.
	ErrInvalid = errors.New("invalid argument")
)

// Object is one stored resource. The store owns ResourceVersion and CreatedAtMs;
// everything else is the caller's.
type Object struct {
	Kind      string
	ID        string
	Workspace string
	Name      string
	Labels    map[string]string
	// ResourceVersion is bumped by every successful write; Create returns 1. Update and
	// Delete compare it with the stored value (compare-and-swap).
	ResourceVersion uint64
	// CreatedAtMs is set by Create when zero and never changed by Update.
	CreatedAtMs int64
	// Data is an opaque payload (a serialized proto for the gateway).
	Data []byte
}

// Clone returns a deep copy, so that neither the store nor its caller sees the other's
// later mutations of Labels or Data.
func (o *Object) Clone() *Object {
	if o == nil {
		return nil
	}
	c := *o
	c.Labels = maps.Clone(o.Labels)
	if o.Data != nil {
		c.Data = slices.Clone(o.Data)
	}
	return &c
}

// Validate checks the fields a backend needs before a write.
func (o *Object) Validate() error {
	switch {
	case o == nil:
		return fmt.Errorf("store: nil object: %w", ErrInvalid)
	case o.Kind == "":
		return fmt.Errorf("store: object %q has an empty Kind; set it (e.g. \"sandbox\"): %w", o.ID, ErrInvalid)
	case o.ID == "":
		return fmt.Errorf("store: %s %q has an empty ID; generate one (a UUID) before writing: %w", o.Kind, o.Name, ErrInvalid)
	case o.Name == "":
		return fmt.Errorf("store: %s %q has an empty Name; names are unique per (kind, workspace), use the ID when the resource has none: %w", o.Kind, o.ID, ErrInvalid)
	}
	return nil
}

// ListOptions selects and pages a List.
type ListOptions struct {
	// Workspace restricts the list to one workspace unless AllWorkspaces is set.
	Workspace     string
	AllWorkspaces bool
	// Selector keeps objects whose labels contain every key with the same value.
	Selector map[string]string
	// Limit caps the number of objects returned (0 = no cap); Offset skips that many
	// matching objects first. Both apply after workspace and selector filtering.
	Limit, Offset int
}

// Validate reports bad paging values.
func (o ListOptions) Validate() error {
	if o.Limit < 0 {
		return fmt.Errorf("store: list Limit %d is negative; use 0 for no limit: %w", o.Limit, ErrInvalid)
	}
	if o.Offset < 0 {
		return fmt.Errorf("store: list Offset %d is negative: %w", o.Offset, ErrInvalid)
	}
	return nil
}

// Store is implemented by every backend. All methods are safe for concurrent use.
// Objects passed in are not retained; objects returned are the caller's to mutate.
type Store interface {
	// Create stores a new object with ResourceVersion 1 (the input's is ignored) and
	// CreatedAtMs = now when zero. ErrAlreadyExists if the id or (kind, workspace, name)
	// is taken.
	Create(ctx context.Context, o *Object) (*Object, error)
	// Get returns ErrNotFound when no object of that kind has the id.
	Get(ctx context.Context, kind, id string) (*Object, error)
	GetByName(ctx context.Context, kind, workspace, name string) (*Object, error)
	// List returns matching objects ordered by CreatedAtMs, then ID.
	List(ctx context.Context, kind string, opts ListOptions) ([]*Object, error)
	// Update replaces Workspace, Name, Labels and Data if o.ResourceVersion equals the
	// stored version (else ErrConflict) and returns the object with the bumped version.
	// Kind, ID and CreatedAtMs are immutable.
	Update(ctx context.Context, o *Object) (*Object, error)
	// Delete removes the object. resourceVersion 0 deletes unconditionally; otherwise a
	// mismatch is ErrConflict.
	Delete(ctx context.Context, kind, id string, resourceVersion uint64) error
	Close() error
}

// NotFound returns ErrNotFound wrapped with the object's kind and id.
func NotFound(kind, id string) error {
	return fmt.Errorf("store: %s %q: %w", kind, id, ErrNotFound)
}

// NotFoundName returns ErrNotFound wrapped with the object's kind, workspace and name.
func NotFoundName(kind, workspace, name string) error {
	return fmt.Errorf("store: %s named %q in workspace %q: %w", kind, name, workspace, ErrNotFound)
}

// AlreadyExists returns ErrAlreadyExists naming the object.
func AlreadyExists(o *Object) error {
	return fmt.Errorf("store: %s %q (name %q in workspace %q) already exists; pick another name: %w",
		o.Kind, o.ID, o.Name, o.Workspace, ErrAlreadyExists)
}

// Conflict returns ErrConflict naming the object, the caller's and the stored version.
func Conflict(kind, id string, have, stored uint64) error {
	return fmt.Errorf("store: %s %q: resource version %d is stale (stored %d); re-read and retry: %w",
		kind, id, have, stored, ErrConflict)
}

// DefaultPath is where the embedded SQLite database lives by default:
// $XDG_STATE_HOME/openshell/gateway/openshell.db, falling back to
// ~/.local/state/openshell/gateway/openshell.db (XDG base directory spec: state that
// survives restarts but is not configuration).
func DefaultPath() (string, error) {
	base := os.Getenv("XDG_STATE_HOME")
	if !filepath.IsAbs(base) { // the spec says relative values are to be ignored
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("store: no default database path: %w; set XDG_STATE_HOME or HOME, or pass a path", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "openshell", "gateway", "openshell.db"), nil
}
