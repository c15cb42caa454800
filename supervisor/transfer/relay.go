package transfer

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/relayframe"
)

// A transfer relay carries one transfer as frames (relayframe's header), because
// the relay is one byte stream with no half-close of its own: each frame is a kind
// byte, a 4-byte big-endian length and the payload. The client sends data frames and then an end
// frame; the supervisor answers with data frames and ends with one exit frame.
const (
	FrameData = 'd'
	FrameEnd  = 'e'
	FrameExit = 'x'
)

// MaxFrame is the largest payload a reader accepts (and a writer sends).
const MaxFrame = relayframe.MaxFrame

// maxExitFrame bounds an exit frame (a JSON Exit with the server's message).
const maxExitFrame = 64 << 10

// Exit is the supervisor's last frame: the transfer server's exit code and, when it
// failed, its message.
type Exit struct {
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
}

// ExitOf is the Exit of a transfer that ended with err (13 for a permission error,
// as the re-executed server exits).
func ExitOf(err error) Exit {
	switch {
	case err == nil:
		return Exit{}
	case errors.Is(err, os.ErrPermission):
		return Exit{Code: 13, Error: err.Error()}
	}
	return Exit{Code: 1, Error: err.Error()}
}

// RequestOf turns a relay's transfer target into a Request, checked as ParseRequest
// checks the subsystem's.
func RequestOf(t *pb.TransferRelayTarget) (Request, error) {
	r := Request{Path: t.GetPath()}
	switch t.GetDirection() {
	case pb.TransferRelayTarget_DIRECTION_UPLOAD:
		r.Op = OpUpload
	case pb.TransferRelayTarget_DIRECTION_DOWNLOAD:
		r.Op = OpDownload
	default:
		return r, fmt.Errorf("transfer: direction %v: use DIRECTION_UPLOAD or DIRECTION_DOWNLOAD", t.GetDirection())
	}
	b, _ := json.Marshal(r)
	return ParseRequest(string(b))
}

// FrameWriter sends everything written to it as data frames.
type FrameWriter struct{ W io.Writer }

// Write sends p as data frames of at most MaxFrame bytes.
func (f FrameWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), MaxFrame)
		if err := writeHeader(f.W, FrameData, n); err != nil {
			return written, err
		}
		m, err := f.W.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func writeHeader(w io.Writer, kind byte, n int) error {
	_, err := w.Write(relayframe.AppendHeader(make([]byte, 0, relayframe.HeaderLen), kind, n))
	return err
}

// WriteEnd sends the end frame: no more data follows.
func WriteEnd(w io.Writer) error { return writeHeader(w, FrameEnd, 0) }

// WriteExit sends the exit frame.
func WriteExit(w io.Writer, e Exit) error {
	if len(e.Error) > maxExitFrame/2 {
		e.Error = e.Error[:maxExitFrame/2] + "…"
	}
	b, _ := json.Marshal(e)
	if err := writeHeader(w, FrameExit, len(b)); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// FrameReader reads the data of a framed stream. Read returns io.EOF at the end
// frame (or, on the client side, at the exit frame, which Exit then returns).
type FrameReader struct {
	r      *bufio.Reader
	left   int
	done   bool
	exitOK bool
	exit   *Exit
}

// NewFrameReader reads frames from r; the supervisor's side (exitOK false) accepts
// data and end frames, the client's (exitOK true) data and exit frames.
func NewFrameReader(r io.Reader, exitOK bool) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10), exitOK: exitOK}
}

// Exit is the exit frame once Read has returned io.EOF on the client side.
func (f *FrameReader) Exit() *Exit { return f.exit }

func (f *FrameReader) Read(p []byte) (int, error) {
	for f.left == 0 {
		if f.done {
			return 0, io.EOF
		}
		if err := f.next(); err != nil {
			return 0, err
		}
	}
	n, err := f.r.Read(p[:min(len(p), f.left)])
	f.left -= n
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // the stream ended inside a frame
	}
	return n, err
}

func (f *FrameReader) next() error {
	kind, n, err := relayframe.ReadHeader(f.r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("transfer relay: the stream ended without an %s frame (the other side went away)", f.last())
		}
		return fmt.Errorf("transfer relay: %w", err)
	}
	switch {
	case kind == FrameData:
		if n > MaxFrame {
			return fmt.Errorf("transfer relay: data frame of %d bytes is over the %d-byte limit", n, MaxFrame)
		}
		f.left = int(n)
	case kind == FrameEnd && !f.exitOK:
		if n != 0 {
			return fmt.Errorf("transfer relay: end frame carries %d bytes; it must be empty", n)
		}
		f.done = true
	case kind == FrameExit && f.exitOK:
		if n > maxExitFrame {
			return fmt.Errorf("transfer relay: exit frame of %d bytes is over the %d-byte limit", n, maxExitFrame)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(f.r, b); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("transfer relay: exit frame: %w", err)
		}
		var e Exit
		if err := json.Unmarshal(b, &e); err != nil {
			return fmt.Errorf("transfer relay: exit frame: %w", err)
		}
		f.exit, f.done = &e, true
	default:
		return fmt.Errorf("transfer relay: unexpected frame kind %q (want data or %s)", kind, f.last())
	}
	return nil
}

func (f *FrameReader) last() string {
	if f.exitOK {
		return "exit"
	}
	return "end"
}

// Runner runs one transfer: an upload reads the tar stream from in; what it writes
// to out reaches the client as data. It returns how the transfer ended.
type Runner func(ctx context.Context, req Request, in io.Reader, out io.Writer) Exit

// InProcess runs transfers in this process (right only when it already runs as the
// sandbox user); dir and writable are as for Serve.
func InProcess(dir string, writable []string) Runner {
	return func(_ context.Context, req Request, in io.Reader, out io.Writer) Exit {
		return ExitOf(Serve(req, dir, in, out, writable))
	}
}

// ServeRelay serves one transfer relay on c with run and closes c. A bad target
// is reported to the client in the exit frame.
func ServeRelay(ctx context.Context, c io.ReadWriteCloser, t *pb.TransferRelayTarget, run Runner) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var e Exit
	if req, err := RequestOf(t); err != nil {
		e = ExitOf(err)
	} else {
		e = run(ctx, req, NewFrameReader(c, false), FrameWriter{W: c})
	}
	e.Error = strings.TrimSpace(e.Error)
	if err := WriteExit(c, e); err != nil {
		return
	}
	// Let the exit frame leave, then leave the end of the relay to the client: data
	// may still be on its way through the gateway, and a relay that ends on this
	// side first can be torn down before it arrives. A client that never hangs up
	// is given drainWait.
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	drained := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, c)
		close(drained)
	}()
	timer := time.NewTimer(drainWait)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
	case <-ctx.Done():
	}
}

// drainWait bounds how long a finished transfer waits for the client to hang up.
const drainWait = 30 * time.Second
