package wire

// The guest's proof of being the supervisor that booted, and the bootstrap handshake.
//
// Per boot the VM runner mints an instance secret and hands it, inside the bootstrap
// document, to the first guest connection on the bootstrap port, which is the
// supervisor running as PID 1 before any agent process exists. The runner then closes
// that port for the rest of the boot. Every connection to the gateway and egress ports
// must start with the preamble carrying that secret; the runner refuses any other.
//
// Bootstrap handshake (runner ↔ guest on the bootstrap port):
//
//	runner → guest  the bootstrap document (one JSON object)
//	guest → runner  BootstrapAck, once it has decoded and checked the document
//	runner → guest  BootstrapDone, after it has closed the bootstrap port, then the
//	                host's clock (HostClockLen bytes), then it hangs up
//
// The document counts as served only when the acknowledgement arrived, so a transfer
// cut off halfway is served again to the guest's next attempt; and the guest goes on
// only after BootstrapDone, when nothing else can fetch the document any more. The
// clock comes after BootstrapDone so that a guest that reads no further (an older
// supervisor) still takes the confirmation; a guest finding none (an older runner
// hangs up at once) keeps its own clock.

import (
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"
)

// SecretLen is the size of an instance secret in bytes (hex in the bootstrap document).
const SecretLen = 32

// Secret is a per-boot instance secret.
type Secret [SecretLen]byte

// preambleMagic starts every preamble: a version for the format and a quick way to
// tell a guest that does not send one from one that sends a wrong secret.
var preambleMagic = [4]byte{'O', 'S', 'I', '1'}

// PreambleLen is the size of the preamble.
const PreambleLen = len(preambleMagic) + SecretLen

// Bootstrap handshake messages (fixed size: read with io.ReadFull).
const (
	BootstrapAck  = "OSB1-ACK"
	BootstrapDone = "OSB1-END"
)

// HostClockLen is the size of the host's clock sent after BootstrapDone: the host's
// time as it confirmed, in Unix nanoseconds, big-endian. A guest's clock starts from
// the VM's real-time clock, in whole seconds, when it boots (for a pooled VM, long
// before its claim); the supervisor sets it to this one.
const HostClockLen = 8

// AppendHostClock appends t in the form sent after BootstrapDone.
func AppendHostClock(b []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
}

// ParseHostClock decodes what AppendHostClock appended; false for a time before 2001 or
// after 2200 (not a clock the host could have sent).
func ParseHostClock(b [HostClockLen]byte) (time.Time, bool) {
	ns := int64(binary.BigEndian.Uint64(b[:]))
	t := time.Unix(0, ns)
	return t, t.Year() > 2000 && t.Year() < 2200
}

// Errors of the preamble check.
var (
	ErrBadPreamble = errors.New("channel wire: the connection does not start with an instance preamble")
	ErrWrongSecret = errors.New("channel wire: the instance secret does not match this boot's")
)

// ParseSecret decodes the hex form of a secret (as in the bootstrap document).
func ParseSecret(s string) (Secret, error) {
	var sec Secret
	if len(s) != 2*SecretLen {
		return sec, fmt.Errorf("instance secret: %d characters, want %d hex digits", len(s), 2*SecretLen)
	}
	if _, err := hex.Decode(sec[:], []byte(s)); err != nil {
		return sec, fmt.Errorf("instance secret: %w", err)
	}
	return sec, nil
}

// String is the hex form.
func (s Secret) String() string { return hex.EncodeToString(s[:]) }

// Equal compares in constant time.
func (s Secret) Equal(o Secret) bool { return subtle.ConstantTimeCompare(s[:], o[:]) == 1 }

// AppendPreamble appends the preamble carrying s to b.
func AppendPreamble(b []byte, s Secret) []byte {
	b = append(b, preambleMagic[:]...)
	return append(b, s[:]...)
}

// ParsePreamble decodes a preamble.
func ParsePreamble(p []byte) (Secret, error) {
	var s Secret
	if len(p) != PreambleLen {
		return s, fmt.Errorf("%w: %d bytes, want %d", ErrBadPreamble, len(p), PreambleLen)
	}
	if [4]byte(p[:4]) != preambleMagic {
		return s, fmt.Errorf("%w: starts with %q", ErrBadPreamble, p[:4])
	}
	copy(s[:], p[4:])
	return s, nil
}

// CheckPreamble reads exactly one preamble from r (nothing more) and compares its
// secret with want in constant time.
func CheckPreamble(r io.Reader, want Secret) error {
	var p [PreambleLen]byte
	if n, err := io.ReadFull(r, p[:]); err != nil {
		return fmt.Errorf("%w: read %d of %d bytes: %w", ErrBadPreamble, n, PreambleLen, err)
	}
	got, err := ParsePreamble(p[:])
	if err != nil {
		return err
	}
	if !got.Equal(want) {
		return ErrWrongSecret
	}
	return nil
}
