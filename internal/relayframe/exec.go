package relayframe

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The exec relay's frame kinds. The supervisor sends ExecHello first (so a client
// can tell it from a supervisor that answered with its SSH server), then stdout and
// stderr data, and ends with one ExecExit. The client sends stdin data, ExecStdinEOF,
// window sizes and signals.
const (
	ExecHello    = 'h'
	ExecStdout   = 'o'
	ExecStderr   = 'e'
	ExecExit     = 'x'
	ExecStdin    = 'i'
	ExecStdinEOF = 'c'
	ExecWindow   = 'w'
	ExecSignal   = 's'
)

// MaxWinsize bounds a window's columns and rows (the least is 1).
const MaxWinsize = 4096

// maxExitFrame bounds an exit frame (a JSON ExitStatus with a message).
const maxExitFrame = 64 << 10

// Signals are the names an ExecSignal frame may carry.
var Signals = []string{"HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "WINCH"}

// ExitStatus ends an exec relay. Error is set when the command could not be run
// at all for a reason other than the command itself (a malformed request or frame):
// the client reports it as an error rather than as the command's exit code.
type ExitStatus struct {
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"` // the signal that ended the command, if one did
	Error  string `json:"error,omitempty"`
}

// ErrProtocol is wrapped by every malformed-frame error of the exec relay.
var ErrProtocol = errors.New("exec relay")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

// CheckWindow reports whether cols x rows is a window size the relay carries.
func CheckWindow(cols, rows uint32) error {
	if cols < 1 || cols > MaxWinsize || rows < 1 || rows > MaxWinsize {
		return fmt.Errorf("window %dx%d: columns and rows must each be 1-%d", cols, rows, MaxWinsize)
	}
	return nil
}

// WriteWindow sends a window size.
func WriteWindow(w *Writer, cols, rows uint16) error {
	var p [4]byte
	binary.BigEndian.PutUint16(p[:2], cols)
	binary.BigEndian.PutUint16(p[2:], rows)
	return w.Frame(ExecWindow, p[:])
}

// WriteExit sends the exit frame (a longer Error is cut).
func WriteExit(w *Writer, e ExitStatus) error {
	if len(e.Error) > maxExitFrame/2 {
		e.Error = e.Error[:maxExitFrame/2] + "…"
	}
	b, _ := json.Marshal(e)
	return w.Frame(ExecExit, b)
}

// Input is one client frame as the supervisor reads it.
type Input struct {
	Kind       byte   // ExecStdin, ExecStdinEOF, ExecWindow or ExecSignal
	Data       []byte // stdin: valid until the next ReadInput
	Cols, Rows uint16 // window
	Signal     string // one of Signals
}

// ReadInput reads and checks the next client frame. io.EOF: the client's stream
// ended between frames.
func ReadInput(r *Reader) (Input, error) {
	kind, p, err := r.Next(MaxFrame)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return Input{}, io.EOF
		}
		return Input{}, protoErr("reading a client frame: %w", err)
	}
	in := Input{Kind: kind}
	switch kind {
	case ExecStdin:
		in.Data = p
	case ExecStdinEOF:
		if len(p) != 0 {
			return in, protoErr("stdin-closed frame carries %d bytes; it must be empty", len(p))
		}
	case ExecWindow:
		if len(p) != 4 {
			return in, protoErr("window frame of %d bytes; it must be 4 (columns, rows)", len(p))
		}
		in.Cols, in.Rows = binary.BigEndian.Uint16(p[:2]), binary.BigEndian.Uint16(p[2:])
		if err := CheckWindow(uint32(in.Cols), uint32(in.Rows)); err != nil {
			return in, protoErr("%v", err)
		}
	case ExecSignal:
		in.Signal = string(p)
		if !slices.Contains(Signals, in.Signal) {
			return in, protoErr("signal frame names %q; send one of %v", truncate(p), Signals)
		}
	default:
		return in, protoErr("unknown client frame kind %q (want stdin %q, stdin closed %q, window %q or signal %q)",
			kind, ExecStdin, ExecStdinEOF, ExecWindow, ExecSignal)
	}
	return in, nil
}

// Output is one supervisor frame as the client reads it.
type Output struct {
	Kind byte        // ExecHello, ExecStdout, ExecStderr or ExecExit
	Data []byte      // stdout/stderr: valid until the next ReadOutput
	Exit *ExitStatus // exit
}

// ReadOutput reads and checks the next supervisor frame.
func ReadOutput(r *Reader) (Output, error) {
	kind, p, err := r.Next(MaxFrame)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return Output{}, protoErr("the stream ended without an exit frame (the sandbox side went away)")
		}
		return Output{}, protoErr("reading a supervisor frame: %w", err)
	}
	out := Output{Kind: kind}
	switch kind {
	case ExecHello:
		if len(p) != 0 {
			return out, protoErr("hello frame carries %d bytes; it must be empty", len(p))
		}
	case ExecStdout, ExecStderr:
		out.Data = p
	case ExecExit:
		if len(p) > maxExitFrame {
			return out, protoErr("exit frame of %d bytes is over the %d-byte limit", len(p), maxExitFrame)
		}
		var e ExitStatus
		if err := json.Unmarshal(p, &e); err != nil {
			return out, protoErr("exit frame: %v", err)
		}
		if e.Code < 0 || e.Code > 255 {
			return out, protoErr("exit frame: code %d is outside 0-255", e.Code)
		}
		out.Exit = &e
	default:
		return out, protoErr("unknown supervisor frame kind %q (want hello %q, stdout %q, stderr %q or exit %q)",
			kind, ExecHello, ExecStdout, ExecStderr, ExecExit)
	}
	return out, nil
}

func truncate(p []byte) string {
	if len(p) > 32 {
		return string(p[:32]) + "…"
	}
	return string(p)
}
