package transfer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// OpenTarget opens the directory a tree is extracted into: an existing directory p
// receives the tree under its own name (as = ""); otherwise p's parent receives it
// under p's base name. The directory is opened first and checked by its real path
// (what the descriptor points at, not the string), so a symlink swapped in between
// cannot redirect the write. where is the directory's real path.
func OpenTarget(p string, writable []string) (root *os.Root, as, where string, err error) {
	dir := p
	if st, err := os.Stat(p); err != nil || !st.IsDir() {
		dir, as = filepath.Dir(p), filepath.Base(p)
	}
	d, err := os.Open(dir)
	if err != nil {
		// Confined, the agent's Landlock view may not even let it open a directory
		// outside the policy: say which rule is missing rather than EACCES.
		if errors.Is(err, os.ErrPermission) {
			if cerr := CheckWritable(filepath.Join(dir, as), writable); cerr != nil {
				return nil, "", "", cerr
			}
		}
		return nil, "", "", fmt.Errorf("destination directory: %w", err)
	}
	defer d.Close()
	open := "/proc/self/fd/" + strconv.Itoa(int(d.Fd()))
	real, err := os.Readlink(open)
	if err != nil { // no /proc (a client on macOS): resolve the name instead
		open = dir
		if real, err = filepath.EvalSymlinks(dir); err != nil {
			return nil, "", "", fmt.Errorf("destination directory: %w", err)
		}
	}
	where = real
	if as != "" {
		where = filepath.Join(real, as)
	}
	if err := CheckWritable(where, writable); err != nil {
		return nil, "", "", err
	}
	if root, err = os.OpenRoot(open); err != nil {
		return nil, "", "", fmt.Errorf("destination directory %s: %w", dir, err)
	}
	return root, as, real, nil
}

// Serve runs one transfer on the server side: an upload reads a tar stream from in
// and writes a Result line to out; a download writes a Header line and then the tar
// stream to out. Relative paths are taken from dir ("" = the working directory).
func Serve(req Request, dir string, in io.Reader, out io.Writer, writable []string) error {
	p := req.Path
	if !filepath.IsAbs(p) {
		if dir == "" {
			wd, err := os.Getwd()
			if err != nil {
				return err
			}
			dir = wd
		}
		p = filepath.Join(dir, p)
	}
	switch req.Op {
	case OpUpload:
		root, as, where, err := OpenTarget(p, writable)
		if err != nil {
			return fmt.Errorf("upload to %s: %w", req.Path, err)
		}
		defer root.Close()
		res, err := Extract(root, as, in, nil)
		if err != nil {
			return fmt.Errorf("upload to %s: %w", req.Path, err)
		}
		_, _ = io.Copy(io.Discard, in)
		res.Path = filepath.Join(where, res.Path)
		return json.NewEncoder(out).Encode(res)
	case OpDownload:
		size, err := Size(p, nil)
		if err != nil {
			return fmt.Errorf("download %s: %w", req.Path, err)
		}
		bw := newSpliceWriter(out)
		if err := json.NewEncoder(bw).Encode(Header{Bytes: size}); err != nil {
			return err
		}
		if err := WriteTree(bw, p, filepath.Base(p), nil, nil); err != nil {
			return fmt.Errorf("download %s: %w", req.Path, err)
		}
		return bw.Flush()
	}
	return fmt.Errorf("transfer: unknown op %q", req.Op)
}

// Main serves one transfer on stdin/stdout as the re-executed "tar-server" (args are
// the arguments after ServerArg: the writable list as JSON). It returns the exit code.
func Main(args []string) int {
	err := func() error {
		var writable []string
		if len(args) > 0 {
			if err := json.Unmarshal([]byte(args[0]), &writable); err != nil {
				return fmt.Errorf("writable list: %w", err)
			}
		}
		req, err := ParseRequest(os.Getenv(EnvRequest))
		if err != nil {
			return err
		}
		return Serve(req, "", os.Stdin, os.Stdout, writable)
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if errors.Is(err, os.ErrPermission) {
			return 13
		}
		return 1
	}
	return 0
}

// spliceWriter is a buffered writer on a pipe whose large file contents WriteTree
// splices into the pipe directly (see WriteTree).
type spliceWriter struct {
	*bufio.Writer
	pipe *os.File // nil: not a pipe, never spliced into
}

// newSpliceWriter buffers out; when out is a pipe (the re-executed server's stdout)
// WriteTree may splice into it.
func newSpliceWriter(out io.Writer) *spliceWriter {
	sw := &spliceWriter{Writer: bufio.NewWriterSize(out, 256<<10)}
	if f, ok := out.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&fs.ModeNamedPipe != 0 {
			sw.pipe = f
		}
	}
	return sw
}
