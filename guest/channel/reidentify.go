package channel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
)

// maxIdentityBytes bounds a new identity document (a bootstrap config and a little more).
const maxIdentityBytes = 8 << 20

// FetchNewIdentity asks the host whether this guest is now another sandbox: a VM
// restored as a copy of a snapshot still holds the snapshotted sandbox's identity,
// and its runner serves the copy's bootstrap document on the bootstrap port to the
// connection that opens with the old instance secret (which only the supervisor
// holds). It returns the document (acknowledged, the port confirmed closed), or nil
// when the host offers none (the usual case: the port closed after this boot's
// first document).
func FetchNewIdentity(ctx context.Context, secret wire.Secret) ([]byte, error) {
	c, err := DialHostAs(ctx, PortBootstrap, secret)
	if err != nil {
		return nil, nil // nobody serves the port: no new identity
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	var doc json.RawMessage
	if err := json.NewDecoder(io.LimitReader(c, maxIdentityBytes)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil // the host closed the stream: nothing for us
		}
		return nil, fmt.Errorf("guest channel: read a new identity: %w", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	if err := AckBootstrap(c, 10*time.Second); err != nil {
		return nil, err
	}
	return doc, nil
}
