package transfer

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/openshell/openshell/internal/relayframe"
)

// GatewaySocketBulk returns the bulk stream dialer of a supervisor that reaches the
// gateway on a Unix socket (a container's per-sandbox socket, endpoint
// "unix:///dir/gateway.sock"): it dials the bulk socket beside it and sends the
// sandbox token, so that the stream is ready for its open frame. nil for any other
// endpoint (TCP: no bulk streams; transfers go over the session).
func GatewaySocketBulk(endpoint string, token func() (string, error)) func(ctx context.Context) (net.Conn, error) {
	path, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok || !filepath.IsAbs(path) {
		return nil
	}
	bulk := filepath.Join(filepath.Dir(path), relayframe.BulkSocketName)
	return func(ctx context.Context) (net.Conn, error) {
		tok, err := token()
		if err != nil {
			return nil, fmt.Errorf("bulk stream: %w", err)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", bulk)
		if err != nil {
			return nil, err
		}
		if err := relayframe.WriteToken(c, tok); err != nil {
			c.Close()
			return nil, fmt.Errorf("bulk stream %s: %w", bulk, err)
		}
		return c, nil
	}
}
