package gateway

import (
	"errors"
	"fmt"
	"time"

	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/internal/relayframe"
)

// bulkOpenWait bounds how long a bulk stream may take to name its relay.
const bulkOpenWait = 10 * time.Second

// errBulkRefused wraps every refusal of a bulk stream on a sandbox's socket.
var errBulkRefused = errors.New("bulk stream refused")

// ServeSandboxBulk serves one bulk stream that arrived on the bulk socket of sandbox
// socketID (a container's per-sandbox socket directory): a file transfer's bytes go
// between the supervisor's tar server and the relay pipe directly, with no gRPC
// session framing on either side. The stream opens with the sandbox token (which
// must be socketID's) and an open frame naming a relay channel this gateway issued
// to socketID's supervisor instance, with that instance's secret; the channel pairs
// once. A refusal is answered with its reason and the stream closed; the supervisor
// then opens the relay over its session instead.
func (s *Server) ServeSandboxBulk(c hub.BulkConn, socketID string) error {
	type deadliner interface{ SetReadDeadline(time.Time) error }
	if d, ok := c.(deadliner); ok {
		_ = d.SetReadDeadline(time.Now().Add(bulkOpenWait))
	}
	refuse := func(err error) error {
		_ = relayframe.WriteOpenReply(c, err)
		_ = c.Close()
		s.log.Warn("bulk stream refused", "sandbox_id", socketID, "err", err)
		return err
	}
	tok, err := relayframe.ReadToken(c)
	if err != nil {
		return refuse(fmt.Errorf("%w: %w", errBulkRefused, err))
	}
	id, err := s.opts.Tokens.Verify(tok)
	if err != nil {
		return refuse(fmt.Errorf("%w: sandbox token: %w", errBulkRefused, err))
	}
	if id != socketID {
		return refuse(fmt.Errorf("%w: a token of sandbox %s may not be used on the bulk socket of sandbox %s", errBulkRefused, id, socketID))
	}
	o, err := relayframe.ReadOpen(c)
	if err != nil {
		return refuse(fmt.Errorf("%w: %w", errBulkRefused, err))
	}
	if d, ok := c.(deadliner); ok {
		_ = d.SetReadDeadline(time.Time{})
	}
	accepted, start := false, time.Now()
	st, err := s.hub.ServeBulk(c, o.ChannelID, hub.Instance{ID: o.InstanceID, Secret: o.InstanceSecret},
		func(sandboxID string) error {
			if sandboxID != socketID {
				return fmt.Errorf("%w: relay channel %s belongs to another sandbox than %s", errBulkRefused, o.ChannelID, socketID)
			}
			return nil
		},
		func() error {
			accepted = true
			return relayframe.WriteOpenReply(c, nil)
		})
	if err != nil && !accepted {
		return refuse(err)
	}
	s.log.Info("bulk stream ended", "sandbox_id", socketID, "channel_id", o.ChannelID,
		"bytes_up", st.Up, "bytes_down", st.Down, "seconds", time.Since(start).Seconds(), "err", err)
	return err
}
