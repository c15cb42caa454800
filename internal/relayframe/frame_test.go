package relayframe

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestFramesRoundTrip(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	big := bytes.Repeat([]byte("0123456789"), (MaxFrame+MaxFrame/2)/10) // larger than one frame
	if err := w.Frame(ExecHello, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := (KindWriter{W: w, Kind: ExecStdout}).Write(big); err != nil {
		t.Fatal(err)
	}
	if err := w.Frame(ExecStderr, []byte("err")); err != nil {
		t.Fatal(err)
	}
	if err := WriteExit(w, ExitStatus{Code: 3}); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&b)
	var out, errb []byte
	kinds := ""
	for {
		o, err := ReadOutput(r)
		if err != nil {
			t.Fatalf("ReadOutput: %v", err)
		}
		kinds += string(o.Kind)
		switch o.Kind {
		case ExecStdout:
			out = append(out, o.Data...)
		case ExecStderr:
			errb = append(errb, o.Data...)
		}
		if o.Exit != nil {
			if o.Exit.Code != 3 {
				t.Fatalf("exit %+v", o.Exit)
			}
			break
		}
	}
	if kinds != "hooex" {
		t.Fatalf("frame kinds %q, want hooex (stdout split in two frames)", kinds)
	}
	if !bytes.Equal(out, big) || string(errb) != "err" {
		t.Fatalf("stdout %d bytes (want %d), stderr %q", len(out), len(big), errb)
	}
	if _, err := ReadOutput(r); err == nil || !strings.Contains(err.Error(), "without an exit frame") {
		t.Fatalf("after the exit: %v", err)
	}
}

func TestInputFrames(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	_ = w.Frame(ExecStdin, []byte("hello"))
	_ = WriteWindow(w, 120, 40)
	_ = w.Frame(ExecSignal, []byte("TERM"))
	_ = w.Frame(ExecStdinEOF, nil)
	r := NewReader(&b)
	var got []Input
	for {
		in, err := ReadInput(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		in.Data = slices.Clone(in.Data)
		got = append(got, in)
	}
	if len(got) != 4 || string(got[0].Data) != "hello" || got[1].Cols != 120 || got[1].Rows != 40 ||
		got[2].Signal != "TERM" || got[3].Kind != ExecStdinEOF {
		t.Fatalf("inputs %+v", got)
	}
}

// TestHostileInput: every malformed client frame is a clear error naming what is
// wrong, wrapped in ErrProtocol.
func TestHostileInput(t *testing.T) {
	frame := func(kind byte, p []byte) []byte { return append(AppendHeader(nil, kind, len(p)), p...) }
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"huge length", AppendHeader(nil, ExecStdin, 0xffffffff), "over the size limit"},
		{"unknown kind", frame('Z', nil), "unknown client frame kind 'Z'"},
		{"supervisor kind", frame(ExecExit, []byte("{}")), "unknown client frame kind 'x'"},
		{"window zero", frame(ExecWindow, []byte{0, 0, 0, 24}), "columns and rows must each be 1-4096"},
		{"window 65535", frame(ExecWindow, []byte{0xff, 0xff, 0, 24}), "window 65535x24"},
		{"window short", frame(ExecWindow, []byte{0, 80}), "window frame of 2 bytes"},
		{"bad signal", frame(ExecSignal, []byte("SEGV")), `signal frame names "SEGV"`},
		{"nul signal", frame(ExecSignal, []byte("TERM\x00")), "signal frame names"},
		{"eof frame with data", frame(ExecStdinEOF, []byte("x")), "must be empty"},
		{"cut payload", AppendHeader(nil, ExecStdin, 10), "unexpected EOF"},
		{"cut header", []byte{ExecStdin, 0}, "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadInput(NewReader(bytes.NewReader(tc.in)))
			if err == nil || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrProtocol naming %q", err, tc.want)
			}
		})
	}
}

func TestHostileOutput(t *testing.T) {
	frame := func(kind byte, p []byte) []byte { return append(AppendHeader(nil, kind, len(p)), p...) }
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"huge length", AppendHeader(nil, ExecStdout, 1<<31), "over the size limit"},
		{"unknown kind", frame('S', []byte("SH-2.0")), "unknown supervisor frame kind 'S'"},
		{"exit not json", frame(ExecExit, []byte("nope")), "exit frame"},
		{"exit code range", frame(ExecExit, []byte(`{"code":-1}`)), "outside 0-255"},
		{"hello with data", frame(ExecHello, []byte("x")), "must be empty"},
		{"exit over limit", frame(ExecExit, make([]byte, maxExitFrame+1)), "over the 65536-byte limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadOutput(NewReader(bytes.NewReader(tc.in)))
			if err == nil || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrProtocol naming %q", err, tc.want)
			}
		})
	}
}

// FuzzExecInput feeds arbitrary bytes to the supervisor's frame parser: it must
// return frames that satisfy the protocol's bounds or an ErrProtocol error, never
// panic.
func FuzzExecInput(f *testing.F) {
	var b bytes.Buffer
	w := NewWriter(&b)
	_ = w.Frame(ExecStdin, []byte("data"))
	_ = WriteWindow(w, 80, 24)
	_ = w.Frame(ExecSignal, []byte("INT"))
	_ = w.Frame(ExecStdinEOF, nil)
	f.Add(b.Bytes())
	f.Add(AppendHeader(nil, ExecStdin, 0xffffffff))
	f.Add([]byte{ExecWindow, 0, 0, 0, 4, 0, 0, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		for {
			in, err := ReadInput(r)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, ErrProtocol) {
					t.Fatalf("error outside ErrProtocol: %v", err)
				}
				return
			}
			switch in.Kind {
			case ExecWindow:
				if CheckWindow(uint32(in.Cols), uint32(in.Rows)) != nil {
					t.Fatalf("window %dx%d passed", in.Cols, in.Rows)
				}
			case ExecSignal:
				if !slices.Contains(Signals, in.Signal) {
					t.Fatalf("signal %q passed", in.Signal)
				}
			case ExecStdin:
				if len(in.Data) > MaxFrame {
					t.Fatalf("stdin frame of %d bytes passed", len(in.Data))
				}
			case ExecStdinEOF:
			default:
				t.Fatalf("kind %q passed", in.Kind)
			}
		}
	})
}

// FuzzExecOutput does the same for the gateway's side.
func FuzzExecOutput(f *testing.F) {
	var b bytes.Buffer
	w := NewWriter(&b)
	_ = w.Frame(ExecHello, nil)
	_ = w.Frame(ExecStdout, []byte("out"))
	_ = w.Frame(ExecStderr, []byte("err"))
	_ = WriteExit(w, ExitStatus{Code: 7, Signal: "TERM"})
	f.Add(b.Bytes())
	f.Add([]byte("SSH-2.0-openshell\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		for {
			o, err := ReadOutput(r)
			if err != nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("error outside ErrProtocol: %v", err)
				}
				return
			}
			if o.Kind == ExecExit && (o.Exit == nil || o.Exit.Code < 0 || o.Exit.Code > 255) {
				t.Fatalf("exit %+v passed", o.Exit)
			}
		}
	})
}
