package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gofrs/flock"
)

// ConverterVersion is part of every cache key. Bump it whenever the bytes of
// rootfs.ext4 for a given image would change (unpacking rules, mkfs options,
// Platform), so old entries are rebuilt instead of reused.
const ConverterVersion = 1

const (
	diskFile   = "rootfs.ext4"
	configFile = "config.json"
	tmpDir     = ".tmp"
	locksDir   = ".locks"
	// lockPoll is how often a waiting Ensure retries a busy build lock.
	lockPoll = 50 * time.Millisecond
)

var keyRE = regexp.MustCompile(`^c[0-9]+-[a-f0-9]{64}$`)

// ImageConfig is what the VM driver needs from the image config to start the
// main process.
type ImageConfig struct {
	User       string   `json:"user,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	Env        []string `json:"env,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// Entry is one converted image in the cache.
type Entry struct {
	// Key names the entry: "c<ConverterVersion>-<hex of Digest>".
	Key string `json:"key"`
	// Digest identifies the image content: the manifest (or index) digest for
	// registry, OCI layout and OCI archive sources; the image ID (config
	// digest) for docker-daemon and docker-archive sources.
	Digest string `json:"digest"`
	// Ref is the reference the entry was first built from.
	Ref string `json:"ref"`
	// DiskPath is the read-only ext4 image; attach it read-only.
	DiskPath string      `json:"-"`
	Config   ImageConfig `json:"config"`
	// SizeBytes is the apparent size of rootfs.ext4 (what the guest sees as
	// the disk size); the file is sparse, so it uses at most that on the host.
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	// ConverterVersion that built the entry.
	ConverterVersion int `json:"converter_version"`
}

// Cache is a content-addressed store of converted images under one directory:
//
//	<dir>/<key>/rootfs.ext4, <dir>/<key>/config.json   finished entries (immutable)
//	<dir>/.locks/<key>.lock                            flock: exclusive = building or pruning, shared = in use
//	<dir>/.tmp/<key>-*/                                builds in progress (renamed into place when done)
//
// Several processes may share one cache directory.
type Cache struct {
	dir string
}

// DefaultCacheDir is $XDG_CACHE_HOME/openshell/images, or
// ~/.cache/openshell/images when XDG_CACHE_HOME is unset.
func DefaultCacheDir() (string, error) {
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "openshell", "images"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("image cache directory: neither XDG_CACHE_HOME nor HOME is set: %w", err)
	}
	return filepath.Join(home, ".cache", "openshell", "images"), nil
}

// NewCache opens (creating if needed) the cache at dir; "" means DefaultCacheDir.
func NewCache(dir string) (*Cache, error) {
	if dir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image cache directory %q: %w", dir, err)
	}
	for _, d := range []string{abs, filepath.Join(abs, tmpDir), filepath.Join(abs, locksDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create image cache directory: %w", err)
		}
	}
	return &Cache{dir: abs}, nil
}

// Dir is the cache's absolute directory.
func (c *Cache) Dir() string { return c.dir }

// KeyFor is the cache key of an image digest ("sha256:<hex>").
func KeyFor(digest string) (string, error) {
	if !digestRE.MatchString(digest) {
		return "", fmt.Errorf("image digest %q is not sha256:<64 lowercase hex>", digest)
	}
	return "c" + strconv.Itoa(ConverterVersion) + "-" + strings.TrimPrefix(digest, "sha256:"), nil
}

func (c *Cache) entryDir(key string) string { return filepath.Join(c.dir, key) }
func (c *Cache) lockPath(key string) string {
	return filepath.Join(c.dir, locksDir, key+".lock")
}

// Ensure returns the cache entry for ref, converting the image first when it
// is not cached. Concurrent callers (goroutines or processes) asking for the
// same image share one conversion: the others wait for it and reuse the
// result. A cached image costs one cheap resolve of ref to its digest (none at
// all for a registry reference pinned by digest). progress may be nil.
func (c *Cache) Ensure(ctx context.Context, ref string, progress func(Progress)) (*Entry, error) {
	if progress == nil {
		progress = func(Progress) {}
	}
	r, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	src, err := newSource(r)
	if err != nil {
		return nil, err
	}
	progress(Progress{Phase: "resolve"})
	digest, err := src.resolve(ctx)
	if err != nil {
		if e := c.fallbackByRef(r, err); e != nil {
			progress(Progress{Phase: "cached", Done: e.SizeBytes, Total: e.SizeBytes})
			return e, nil
		}
		return nil, err
	}
	key, err := KeyFor(digest)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	if e, err := c.load(key); err == nil {
		progress(Progress{Phase: "cached", Done: e.SizeBytes, Total: e.SizeBytes})
		return e, nil
	}

	lk := flock.New(c.lockPath(key))
	ok, err := lk.TryLockContext(ctx, lockPoll)
	if err != nil || !ok {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for the build lock of image %s: %w", ref, ctx.Err())
		}
		return nil, fmt.Errorf("lock image cache entry %s: %w", key, err)
	}
	defer lk.Unlock()
	// Someone else may have finished it while we waited.
	if e, err := c.load(key); err == nil {
		progress(Progress{Phase: "cached", Done: e.SizeBytes, Total: e.SizeBytes})
		return e, nil
	}
	e, err := c.build(ctx, src, r, digest, key, progress)
	if err != nil {
		return nil, fmt.Errorf("convert image %s (%s): %w", ref, digest, err)
	}
	progress(Progress{Phase: "done", Done: e.SizeBytes, Total: e.SizeBytes})
	return e, nil
}

// fallbackByRef lets a registry reference by tag work offline: when the
// registry cannot be reached, the newest entry built from the same reference
// is used (and the resolve error logged).
func (c *Cache) fallbackByRef(r Reference, resolveErr error) *Entry {
	if r.Transport != TransportRegistry {
		return nil
	}
	entries, err := c.List()
	if err != nil {
		return nil
	}
	for _, e := range entries { // newest first
		if e.Ref == r.String() && e.ConverterVersion == ConverterVersion {
			slog.Warn("images: registry unreachable, using the cached image for this tag", "ref", e.Ref, "digest", e.Digest, "err", resolveErr)
			return e
		}
	}
	return nil
}

func (c *Cache) build(ctx context.Context, src source, r Reference, digest, key string, progress func(Progress)) (_ *Entry, retErr error) {
	work, err := os.MkdirTemp(filepath.Join(c.dir, tmpDir), key+"-")
	if err != nil {
		return nil, wrapNoSpace(fmt.Errorf("create work directory in %s: %w", c.dir, err), c.dir)
	}
	defer func() {
		// Nothing half-built survives a failure; a crash leaves only .tmp
		// debris, which Prune removes.
		if err := os.RemoveAll(work); err != nil && retErr == nil {
			slog.Warn("images: removing work directory", "dir", work, "err", err)
		}
	}()

	img, compressedSizes, err := src.image(ctx, digest, work, progress)
	if err != nil {
		return nil, wrapNoSpace(err, c.dir)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read image config: %w", err)
	}
	if cf.OS != "" && cf.OS != Platform.OS {
		return nil, fmt.Errorf("image is for %s/%s; openshell VMs run %s/%s", cf.OS, cf.Architecture, Platform.OS, Platform.Architecture)
	}

	rootfs := filepath.Join(work, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return nil, err
	}
	if err := UnpackImage(ctx, img, rootfs, compressedSizes, progress); err != nil {
		return nil, wrapNoSpace(err, c.dir)
	}
	progress(Progress{Phase: "convert"})
	stage := filepath.Join(work, "entry")
	if err := os.Mkdir(stage, 0o755); err != nil {
		return nil, err
	}
	size, err := BuildExt4(ctx, rootfs, filepath.Join(stage, diskFile))
	if err != nil {
		return nil, wrapNoSpace(err, c.dir)
	}
	_ = os.RemoveAll(rootfs) // free the space before anything else is written

	e := &Entry{
		Key:    key,
		Digest: digest,
		Ref:    r.String(),
		Config: ImageConfig{
			User:       cf.Config.User,
			WorkingDir: cf.Config.WorkingDir,
			Env:        cf.Config.Env,
			Entrypoint: cf.Config.Entrypoint,
			Cmd:        cf.Config.Cmd,
		},
		SizeBytes:        size,
		CreatedAt:        time.Now().UTC(),
		ConverterVersion: ConverterVersion,
	}
	raw, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileSync(filepath.Join(stage, configFile), raw); err != nil {
		return nil, wrapNoSpace(err, c.dir)
	}
	if _, err := os.Lstat(c.entryDir(key)); err == nil {
		// An unreadable leftover (we hold the lock and load failed): move it aside.
		slog.Warn("images: replacing a damaged cache entry", "key", key)
		if err := os.Rename(c.entryDir(key), filepath.Join(work, "damaged")); err != nil {
			return nil, fmt.Errorf("move damaged cache entry %s aside: %w", key, err)
		}
	}
	if err := os.Rename(stage, c.entryDir(key)); err != nil {
		return nil, fmt.Errorf("move finished image into the cache: %w", err)
	}
	syncDir(c.dir)
	e.DiskPath = filepath.Join(c.entryDir(key), diskFile)
	return e, nil
}

func wrapNoSpace(err error, dir string) error {
	if errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrNoSpace) {
		return fmt.Errorf("%w in the image cache at %s: free space or point the cache elsewhere: %w", ErrNoSpace, dir, err)
	}
	return err
}

func writeFileSync(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(p string) {
	if d, err := os.Open(p); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// load reads a finished entry; a missing or unreadable one is ErrNotFound.
func (c *Cache) load(key string) (*Entry, error) {
	dir := c.entryDir(key)
	raw, err := os.ReadFile(filepath.Join(dir, configFile))
	if err != nil {
		return nil, fmt.Errorf("image cache entry %s: %w", key, ErrNotFound)
	}
	var e Entry
	if err := json.Unmarshal(raw, &e); err != nil || e.Key != key {
		return nil, fmt.Errorf("image cache entry %s: unreadable config.json: %w", key, ErrNotFound)
	}
	e.DiskPath = filepath.Join(dir, diskFile)
	if _, err := os.Stat(e.DiskPath); err != nil {
		return nil, fmt.Errorf("image cache entry %s: %w", key, ErrNotFound)
	}
	return &e, nil
}

// Get returns the entry with key, or an error wrapping ErrNotFound.
func (c *Cache) Get(key string) (*Entry, error) {
	if !keyRE.MatchString(key) {
		return nil, fmt.Errorf("image cache key %q is malformed (want c<N>-<64 hex>)", key)
	}
	return c.load(key)
}

// List returns every finished entry, newest first.
func (c *Cache) List() ([]*Entry, error) {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("list image cache %s: %w", c.dir, err)
	}
	var out []*Entry
	for _, d := range des {
		if !d.IsDir() || !keyRE.MatchString(d.Name()) {
			continue
		}
		e, err := c.load(d.Name())
		if err != nil {
			continue // being pruned, or debris
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].Key < out[j].Key
	})
	return out, nil
}

// Acquire marks the entry key as in use (a shared lock, held across
// processes) until release is called; Prune never removes it meanwhile.
// It waits while the entry is being pruned, and fails with ErrNotFound when
// the entry does not exist (any more).
func (c *Cache) Acquire(key string) (release func(), err error) {
	if !keyRE.MatchString(key) {
		return nil, fmt.Errorf("image cache key %q is malformed (want c<N>-<64 hex>)", key)
	}
	lk := flock.New(c.lockPath(key))
	if err := lk.RLock(); err != nil {
		return nil, fmt.Errorf("lock image cache entry %s: %w", key, err)
	}
	if _, err := c.load(key); err != nil {
		_ = lk.Unlock()
		return nil, err
	}
	return func() { _ = lk.Unlock() }, nil
}

// EnsureAcquired is Ensure followed by Acquire, retried when a concurrent
// Prune removes the entry in between. The caller must call release when the
// VM no longer uses the disk.
func (c *Cache) EnsureAcquired(ctx context.Context, ref string, progress func(Progress)) (_ *Entry, release func(), err error) {
	for {
		e, err := c.Ensure(ctx, ref, progress)
		if err != nil {
			return nil, nil, err
		}
		release, err := c.Acquire(e.Key)
		if err == nil {
			return e, release, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
	}
}

// InUse reports whether some process holds the entry (Acquire) or is building
// or pruning it right now.
func (c *Cache) InUse(key string) (bool, error) {
	if !keyRE.MatchString(key) {
		return false, fmt.Errorf("image cache key %q is malformed (want c<N>-<64 hex>)", key)
	}
	lk := flock.New(c.lockPath(key))
	ok, err := lk.TryLock()
	if err != nil {
		return false, fmt.Errorf("lock image cache entry %s: %w", key, err)
	}
	if ok {
		_ = lk.Unlock()
	}
	return !ok, nil
}

// Prune removes every entry for which keep returns false, except entries in
// use (Acquire) or being built, which are skipped. It also removes debris of
// interrupted builds. keep nil removes everything not in use.
func (c *Cache) Prune(ctx context.Context, keep func(*Entry) bool) (removed []*Entry, err error) {
	entries, err := c.List()
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		if keep != nil && keep(e) {
			continue
		}
		lk := flock.New(c.lockPath(e.Key))
		ok, err := lk.TryLock()
		if err != nil {
			errs = append(errs, fmt.Errorf("lock image cache entry %s: %w", e.Key, err))
			continue
		}
		if !ok {
			slog.Debug("images: prune skips an entry in use", "key", e.Key, "ref", e.Ref)
			continue
		}
		// Rename first: a reader never sees a half-deleted entry. The lock
		// file stays: deleting it would let two holders lock different inodes.
		trash, err := os.MkdirTemp(filepath.Join(c.dir, tmpDir), "trash-")
		if err == nil {
			err = os.Rename(c.entryDir(e.Key), filepath.Join(trash, e.Key))
		}
		_ = lk.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("remove image cache entry %s: %w", e.Key, err))
			continue
		}
		if err := os.RemoveAll(trash); err != nil {
			errs = append(errs, fmt.Errorf("remove image cache entry %s: %w", e.Key, err))
		}
		removed = append(removed, e)
	}
	errs = append(errs, c.pruneDebris())
	return removed, errors.Join(errs...)
}

// pruneDebris removes work directories whose build is no longer running.
func (c *Cache) pruneDebris() error {
	des, err := os.ReadDir(filepath.Join(c.dir, tmpDir))
	if err != nil {
		return nil
	}
	var errs []error
	for _, d := range des {
		p := filepath.Join(c.dir, tmpDir, d.Name())
		if strings.HasPrefix(d.Name(), "trash-") {
			errs = append(errs, os.RemoveAll(p))
			continue
		}
		k := d.Name() // "<key>-<random>"
		if i := strings.LastIndex(k, "-"); i > 0 {
			k = k[:i]
		}
		if !keyRE.MatchString(k) {
			continue
		}
		lk := flock.New(c.lockPath(k))
		got, err := lk.TryLock()
		if err != nil || !got {
			continue // a build is running
		}
		errs = append(errs, os.RemoveAll(p))
		_ = lk.Unlock()
	}
	return errors.Join(errs...)
}
