package relayframe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A bulk stream carries one relay's bytes over a plain host channel stream instead
// of a RelayStream: inside a VM the guest's CPU is the limit under emulation, and
// gRPC's framing, HTTP/2 and protobuf cost it more per byte than the data itself.
// The guest opens the stream with one BulkOpen frame naming the relay (the channel
// id the gateway issued on the session, which pairs once) and the supervisor
// instance the relay was asked of; the host end opens the RelayStream for it as the
// sandbox (the gateway checks token, instance and channel as for any RelayStream)
// and answers with one BulkOK frame, or one BulkRefused frame saying why. From
// then on the stream carries the relay's bytes both ways, unframed, and a
// half-close on either side is the relay's half-close.
const (
	BulkOpen    = 'o'
	BulkOK      = 'k'
	BulkRefused = 'r'
)

// maxBulkOpen bounds a BulkOpen frame (two ids and a secret: a few hundred bytes) and maxBulkRefused the host's explanation.
const (
	maxBulkOpen    = 8 << 10
	maxBulkRefused = 4 << 10
)

// Open names the relay a bulk stream carries and who asks for it.
type Open struct {
	ChannelID      string `json:"channel_id"`
	InstanceID     string `json:"instance_id"`
	InstanceSecret string `json:"instance_secret,omitempty"`
}

// Check names the first missing or malformed field.
func (o Open) Check() error {
	for _, f := range []struct{ name, v string }{
		{"channel_id", o.ChannelID}, {"instance_id", o.InstanceID},
	} {
		if f.v == "" {
			return fmt.Errorf("bulk open: %s is empty: send the relay_open's channel_id and the supervisor's instance id", f.name)
		}
	}
	for _, f := range []struct{ name, v string }{
		{"channel_id", o.ChannelID}, {"instance_id", o.InstanceID}, {"instance_secret", o.InstanceSecret},
	} {
		// Metadata values: printable ASCII only, so that nothing smuggles a header.
		for i := 0; i < len(f.v); i++ {
			if c := f.v[i]; c < 0x20 || c > 0x7e {
				return fmt.Errorf("bulk open: %s has byte %#x at %d; only printable ASCII is allowed", f.name, c, i)
			}
		}
	}
	return nil
}

// WriteOpen sends o as the stream's first frame.
func WriteOpen(w io.Writer, o Open) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if len(b) > maxBulkOpen {
		return fmt.Errorf("bulk open: %d bytes, over the %d-byte limit", len(b), maxBulkOpen)
	}
	_, err = w.Write(append(AppendHeader(nil, BulkOpen, len(b)), b...))
	return err
}

// ReadOpen reads and checks the first frame of a bulk stream. It reads exactly the
// frame from r, so the relay's bytes that follow stay in r.
func ReadOpen(r io.Reader) (Open, error) {
	var o Open
	kind, n, err := ReadHeader(r)
	if err != nil {
		return o, fmt.Errorf("bulk open: %w", err)
	}
	if kind != BulkOpen {
		return o, fmt.Errorf("bulk open: the first frame is %q; a bulk stream starts with an open frame (%q)", kind, BulkOpen)
	}
	if n > maxBulkOpen {
		return o, fmt.Errorf("bulk open: frame of %d bytes: %w of %d bytes", n, ErrTooLarge, maxBulkOpen)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return o, fmt.Errorf("bulk open: %w", err)
	}
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.DisallowUnknownFields()
	if err := d.Decode(&o); err != nil {
		return Open{}, fmt.Errorf("bulk open: %w", err)
	}
	if d.More() {
		return Open{}, errors.New("bulk open: data after the JSON object; send one object")
	}
	if err := o.Check(); err != nil {
		return Open{}, err
	}
	return o, nil
}

// WriteOpenReply answers a BulkOpen: nil is BulkOK, an error BulkRefused with its
// message.
func WriteOpenReply(w io.Writer, refused error) error {
	if refused == nil {
		_, err := w.Write(AppendHeader(nil, BulkOK, 0))
		return err
	}
	msg := refused.Error()
	if len(msg) > maxBulkRefused {
		msg = msg[:maxBulkRefused]
	}
	_, err := w.Write(append(AppendHeader(nil, BulkRefused, len(msg)), msg...))
	return err
}

// ErrBulkRefused is wrapped by ReadOpenReply when the host refused the stream.
var ErrBulkRefused = errors.New("the host refused the bulk stream")

// ReadOpenReply reads the host's answer to a BulkOpen, exactly that frame.
func ReadOpenReply(r io.Reader) error {
	kind, n, err := ReadHeader(r)
	if err != nil {
		return fmt.Errorf("bulk open reply: %w", err)
	}
	switch kind {
	case BulkOK:
		if n != 0 {
			return fmt.Errorf("bulk open reply: ok frame carries %d bytes; it must be empty", n)
		}
		return nil
	case BulkRefused:
		if n > maxBulkRefused {
			return fmt.Errorf("bulk open reply: refusal of %d bytes: %w of %d bytes", n, ErrTooLarge, maxBulkRefused)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return fmt.Errorf("bulk open reply: %w", err)
		}
		return fmt.Errorf("%w: %s", ErrBulkRefused, b)
	}
	return fmt.Errorf("bulk open reply: unexpected frame kind %q (want %q or %q)", kind, BulkOK, BulkRefused)
}

// OpenBulk opens the relay o names on c, a fresh bulk stream: it sends the open
// frame and reads the host's answer. On success c carries the relay's bytes.
func OpenBulk(c io.ReadWriter, o Open) error {
	if err := o.Check(); err != nil {
		return err
	}
	if err := WriteOpen(c, o); err != nil {
		return fmt.Errorf("bulk open: %w", err)
	}
	return ReadOpenReply(c)
}

// On a container's gateway socket directory the gateway serves bulk streams on a
// socket of their own beside the gRPC socket (BulkSocketName). There a bulk stream
// starts with one BulkToken frame carrying the sandbox token (the VM runner adds the
// token itself, outside the guest), then the BulkOpen frame.
const (
	BulkToken      = 't'
	BulkSocketName = "bulk.sock"
)

// maxBulkToken bounds a BulkToken frame (a sandbox token is a few hundred bytes).
const maxBulkToken = 8 << 10

// WriteToken sends tok as a bulk stream's token frame.
func WriteToken(w io.Writer, tok string) error {
	if tok == "" {
		return errors.New("bulk token: the sandbox token is empty")
	}
	if len(tok) > maxBulkToken {
		return fmt.Errorf("bulk token: %d bytes, over the %d-byte limit", len(tok), maxBulkToken)
	}
	_, err := w.Write(append(AppendHeader(nil, BulkToken, len(tok)), tok...))
	return err
}

// ReadToken reads a bulk stream's token frame, exactly that frame.
func ReadToken(r io.Reader) (string, error) {
	kind, n, err := ReadHeader(r)
	if err != nil {
		return "", fmt.Errorf("bulk token: %w", err)
	}
	if kind != BulkToken {
		return "", fmt.Errorf("bulk token: the first frame is %q; a bulk stream on a gateway socket starts with the sandbox token (%q)", kind, BulkToken)
	}
	switch {
	case n == 0:
		return "", errors.New("bulk token: the token frame is empty; send the sandbox token")
	case n > maxBulkToken:
		return "", fmt.Errorf("bulk token: frame of %d bytes: %w of %d bytes", n, ErrTooLarge, maxBulkToken)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return "", fmt.Errorf("bulk token: %w", err)
	}
	return string(b), nil
}
