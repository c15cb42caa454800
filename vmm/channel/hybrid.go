package channel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"time"
)

// NewHybridVsock is the host end for a vhost-user vsock backend started with
// --uds-path udsPath: a guest dial to port P lands on the Unix socket udsPath_P, and
// a host dial connects to udsPath and sends "CONNECT P".
func NewHybridVsock(udsPath string) *Host {
	return New(TransportVhostUserVsock, &hybrid{uds: udsPath})
}

type hybrid struct{ uds string }

func (h *hybrid) Listen(port uint32) (net.Listener, error) {
	path := fmt.Sprintf("%s_%d", h.uds, port)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}

func (h *hybrid) Dial(ctx context.Context, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", h.uds)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		_ = c.Close()
		return nil, err
	}
	// Read the reply byte by byte so no guest data is swallowed by a buffer.
	var line strings.Builder
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("read CONNECT reply (is the guest listening on port %d?): %w", port, err)
		}
		if b[0] == '\n' {
			break
		}
		if line.Len() > 128 {
			_ = c.Close()
			return nil, errors.New("CONNECT reply too long")
		}
		line.WriteByte(b[0])
	}
	if !strings.HasPrefix(line.String(), "OK") {
		_ = c.Close()
		return nil, fmt.Errorf("CONNECT refused: %q", line.String())
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func (h *hybrid) Close() error { return nil }
