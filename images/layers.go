package images

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Progress reports what Ensure is doing. Phases, in order: "resolve", then
// either "cached" (nothing else to do) or: "fetch" (only for sources copied
// whole first — docker-daemon save, oci-archive extraction; Done bytes),
// "pull" (Done/Total in bytes of layer data read; Total is 0 when the source
// cannot say cheaply), "convert" (building the ext4 disk) and "done"
// (Done = Total = disk size).
type Progress struct {
	Phase       string
	Done, Total int64
}

// errBadTar marks a malformed tar stream (as opposed to a failure to write the
// rootfs), so callers can report the layer as corrupt.
type errBadTar struct{ error }

func (e errBadTar) Unwrap() error { return e.error }

// ErrNotSupported is returned where the host OS cannot unpack images safely.
var ErrNotSupported = errors.New("not supported on this OS")

// ErrCorruptLayer is wrapped when a layer's bytes do not match its digest or
// cannot be decompressed.
var ErrCorruptLayer = errors.New("corrupt image layer")

// UnpackImage applies every layer of img in order onto the rootfs directory
// root, verifying each layer's digest (compressed, when cheap) and diff ID
// (uncompressed). compressedSizes says whether the layers' compressed form is
// cheap to read (see source.image).
func UnpackImage(ctx context.Context, img v1.Image, root string, compressedSizes bool, progress func(Progress)) error {
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("list image layers: %w", err)
	}
	// Diff IDs come from the config: asking a layer for its DiffID may
	// decompress the whole blob to compute it.
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read image config: %w", err)
	}
	if len(cf.RootFS.DiffIDs) != len(layers) {
		return fmt.Errorf("image config lists %d layer diff IDs for %d layers; the image is malformed", len(cf.RootFS.DiffIDs), len(layers))
	}
	var total int64
	if compressedSizes {
		for _, l := range layers {
			n, err := l.Size()
			if err != nil {
				return fmt.Errorf("layer size: %w", err)
			}
			total += n
		}
	}
	pr := &progressReporter{fn: progress, phase: "pull", total: total}
	pr.report(true)
	for i, l := range layers {
		if err := unpackOne(ctx, l, cf.RootFS.DiffIDs[i], root, compressedSizes, pr); err != nil {
			return fmt.Errorf("layer %d of %d: %w", i+1, len(layers), err)
		}
	}
	pr.report(true)
	return nil
}

func unpackOne(ctx context.Context, l v1.Layer, diffID v1.Hash, root string, compressedSizes bool, pr *progressReporter) (retErr error) {
	var err error
	id := diffID.String()
	var rc io.ReadCloser
	var compressedHash hash.Hash
	var digest v1.Hash
	var counted *countingReader
	if compressedSizes {
		if digest, err = l.Digest(); err != nil {
			return fmt.Errorf("layer digest: %w", err)
		}
		id = digest.String()
		raw, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %s: open: %w", id, err)
		}
		compressedHash = sha256.New()
		counted = &countingReader{r: io.TeeReader(raw, compressedHash), pr: pr}
		dec, err := decompress(counted)
		if err != nil {
			raw.Close()
			return fmt.Errorf("layer %s: %w: %v", id, ErrCorruptLayer, err)
		}
		rc = multiCloser{Reader: dec, closers: []io.Closer{dec, raw}}
	} else {
		u, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("layer %s: open: %w", id, err)
		}
		counted = &countingReader{r: u, pr: pr}
		rc = multiCloser{Reader: counted, closers: []io.Closer{u}}
	}
	defer func() {
		if err := rc.Close(); err != nil && retErr == nil {
			retErr = fmt.Errorf("layer %s: %w", id, err)
		}
	}()

	uncompressedHash := sha256.New()
	tracked := &errTrackingReader{r: rc}
	tee := io.TeeReader(tracked, uncompressedHash)
	if err := UnpackLayer(ctx, root, tee); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var bad errBadTar
		if tracked.err != nil || errors.As(err, &bad) || isDecodeError(err) {
			// Tell a damaged blob from a malformed-but-authentic one: read the
			// rest and compare the digest.
			if compressedHash != nil {
				_, _ = io.Copy(io.Discard, counted)
				if got := "sha256:" + hex.EncodeToString(compressedHash.Sum(nil)); got != digest.String() {
					return fmt.Errorf("layer %s: %w: content has digest %s (%v); re-pull or rebuild the image", id, ErrCorruptLayer, got, err)
				}
			}
			return fmt.Errorf("layer %s: %w: %v", id, ErrCorruptLayer, err)
		}
		return fmt.Errorf("layer %s: %w", id, err)
	}
	// The tar end marker may be followed by padding; the digests cover it all.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return fmt.Errorf("layer %s: %w: %v", id, ErrCorruptLayer, err)
	}
	if compressedHash != nil {
		got := "sha256:" + hex.EncodeToString(compressedHash.Sum(nil))
		if digest.Algorithm == "sha256" && got != digest.String() {
			return fmt.Errorf("layer %s: %w: content has digest %s; re-pull or rebuild the image", id, ErrCorruptLayer, got)
		}
	}
	if got := "sha256:" + hex.EncodeToString(uncompressedHash.Sum(nil)); diffID.Algorithm == "sha256" && got != diffID.String() {
		return fmt.Errorf("layer %s: %w: uncompressed content has digest %s, config says diff ID %s; re-pull or rebuild the image", id, ErrCorruptLayer, got, diffID)
	}
	return nil
}

func isDecodeError(err error) bool {
	return errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, zstd.ErrMagicMismatch) ||
		errors.Is(err, zstd.ErrBlockTooSmall) || errors.Is(err, zstd.ErrCRCMismatch) ||
		errors.Is(err, zstd.ErrReservedBlockType) || errors.Is(err, zstd.ErrWindowSizeExceeded)
}

// decompress picks gzip, zstd or none by the stream's magic bytes: media types
// lie often enough (docker-archive layers say gzip and are plain tar).
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

type multiCloser struct {
	io.Reader
	closers []io.Closer
}

func (m multiCloser) Close() error {
	var errs []error
	for _, c := range m.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

type errTrackingReader struct {
	r   io.Reader
	err error
}

func (t *errTrackingReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		t.err = err
	}
	return n, err
}

type countingReader struct {
	r  io.Reader
	pr *progressReporter
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.pr.add(int64(n))
	return n, err
}

type progressReporter struct {
	fn         func(Progress)
	phase      string
	total      int64
	done, last int64
}

func (p *progressReporter) add(n int64) {
	p.done += n
	p.report(false)
}

// report calls the callback at most once per MiB so a slow callback cannot
// slow the pull.
func (p *progressReporter) report(force bool) {
	if p.fn == nil || (!force && p.done-p.last < 1<<20) {
		return
	}
	p.last = p.done
	total := p.total
	if total != 0 && p.done > total {
		total = p.done
	}
	p.fn(Progress{Phase: p.phase, Done: p.done, Total: total})
}
