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
		// The policy first: a directory that is missing (or, confined, that the
		// agent's Landlock view does not even let it open) outside what the policy
		// lets the agent write is refused by the rule, not by ENOENT or EACCES.
		if cerr := CheckWritable(resolveExisting(filepath.Join(dir, as)), writable); cerr != nil {
			return nil, "", "", cerr
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", "", fmt.Errorf("destination directory %s does not exist: create it first or upload to an existing directory: %w", dir, err)
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

// resolveExisting is p with its longest existing ancestor's symlinks resolved, so
// that a path below a missing directory is judged where it would be created.
func resolveExisting(p string) string {
	rest := ""
	for cur := filepath.Clean(p); ; {
		if real, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(real, rest)
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return p
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
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
		res, err := Extract(root, as, newSpliceReader(in), nil)
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
		if os.Getenv(EnvFramed) != "1" {
			return Serve(req, "", os.Stdin, os.Stdout, writable)
		}
		// Frames of up to 1 MiB: a frame header per buffered MiB, not per write.
		out := bufio.NewWriterSize(FrameWriter{W: os.Stdout}, 1<<20)
		if err := Serve(req, "", NewFrameReader(os.Stdin, false), out, writable); err != nil {
			return err
		}
		return out.Flush()
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

// spliceReader reads a tar stream from a pipe (the re-executed server's stdin) and
// lets Extract splice the contents of large files from the pipe into their files
// in the kernel. The tar reader does not see those bytes; when it skips past them
// (an io.Seeker lets it) they are taken from the credit left by the splice instead
// of from the pipe.
type spliceReader struct {
	pipe   *os.File
	credit int64 // bytes spliced past the tar reader, still to be skipped
	pos    int64 // bytes consumed, as the tar reader sees it
}

// newSpliceReader returns in as a spliceReader when it is a pipe, else in itself.
func newSpliceReader(in io.Reader) io.Reader {
	if f, ok := in.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&fs.ModeNamedPipe != 0 {
			return &spliceReader{pipe: f}
		}
	}
	return in
}

func (s *spliceReader) Read(p []byte) (int, error) {
	if s.credit > 0 {
		// Only the tar reader's skip reads here while there is credit; what it
		// reads is thrown away.
		n := int(min(int64(len(p)), s.credit))
		clear(p[:n])
		s.credit -= int64(n)
		s.pos += int64(n)
		return n, nil
	}
	n, err := s.pipe.Read(p)
	s.pos += int64(n)
	return n, err
}

// Seek moves forward over credit only: the tar reader skips a file it did not
// read, which is exactly one spliced file's contents.
func (s *spliceReader) Seek(off int64, whence int) (int64, error) {
	if whence != io.SeekCurrent || off < 0 || off > s.credit {
		return -1, errors.New("transfer: the tar stream can only skip what was spliced")
	}
	s.credit -= off
	s.pos += off
	return s.pos, nil
}

// contents stands for the next n bytes of the pipe, which writeFile splices into
// its file (splicedContents.spliceInto); they become credit as they move.
func (s *spliceReader) contents(n int64) io.Reader { return &splicedContents{s: s, left: n} }

// splicedContents is the next bytes of a spliceReader's pipe, to be spliced by
// writeFile into a file (spliceInto).
type splicedContents struct {
	s    *spliceReader
	left int64
}

func (c *splicedContents) Read([]byte) (int, error) {
	return 0, errors.New("transfer: spliced contents are only moved by spliceInto")
}

// spliceInto moves the contents into f (copying through buf where the kernel will
// not splice) and leaves them as credit for the tar reader to skip.
func (c *splicedContents) spliceInto(f *os.File, buf []byte) (int64, error) {
	n, err := spliceFromPipe(f, c.s.pipe, c.left)
	if errors.Is(err, errNoSplice) {
		n, err = io.CopyBuffer(struct{ io.Writer }{f}, io.LimitReader(c.s.pipe, c.left), buf)
	}
	c.s.credit += n
	c.left -= n
	if err == nil && c.left > 0 {
		err = io.ErrUnexpectedEOF // the stream ended inside the file
	}
	return n, err
}
