package runner

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/instancemd"
	"github.com/openshell/openshell/internal/relayframe"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/session"
)

// bulkOpenWait bounds how long a guest's bulk stream may take to name its relay.
const bulkOpenWait = 10 * time.Second

// serveBulk serves the guest's bulk streams (admitted by the instance gate): each
// carries one relay's bytes unframed, and the runner speaks gRPC for it, opening the
// relay's RelayStream on the gateway as the sandbox. The guest thus moves a file
// transfer's bytes over a plain vsock stream, without HTTP/2 and protobuf, which
// under emulation cost the guest's CPU more than the bytes themselves. The gateway
// checks the stream as any RelayStream: the sandbox token (the runner's, from the
// bootstrap config), the supervisor instance and its secret, and a channel id it
// issued on the session and pairs once.
func serveBulk(l net.Listener, boot *bootstrap.Config, gw *gatewayTarget, log *slog.Logger) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go bulkRelay(c, func() (*grpc.ClientConn, error) { return dialGateway(boot, gw) }, log)
	}
}

// bulkRelay serves one bulk stream c: it reads the open frame, opens the named relay
// on a gateway connection from dial, answers, then pumps bytes until both
// directions end. A stream the gateway refuses ends with the refusal's status; one
// that cannot be opened at all is answered with the reason (the guest then opens the
// relay over its session as before).
func bulkRelay(c net.Conn, dial func() (*grpc.ClientConn, error), log *slog.Logger) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(bulkOpenWait))
	o, err := relayframe.ReadOpen(c)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		log.Warn("bulk stream: bad open frame", "err", err)
		_ = relayframe.WriteOpenReply(c, err)
		return
	}
	log = log.With("channel_id", o.ChannelID)
	cc, err := dial()
	if err != nil {
		log.Warn("bulk stream: gateway connection", "err", err)
		_ = relayframe.WriteOpenReply(c, err)
		return
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv := []string{instancemd.InstanceID, o.InstanceID}
	if o.InstanceSecret != "" {
		kv = append(kv, instancemd.InstanceSecret, o.InstanceSecret)
	}
	rs, err := pb.NewOpenShellClient(cc).RelayStream(metadata.AppendToOutgoingContext(ctx, kv...))
	if err == nil {
		err = rs.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Init{Init: &pb.RelayInit{ChannelId: o.ChannelID}}})
	}
	if err != nil {
		err = fmt.Errorf("open RelayStream: %w", err)
		log.Warn("bulk stream", "err", err)
		_ = relayframe.WriteOpenReply(c, err)
		return
	}
	if err := relayframe.WriteOpenReply(c, nil); err != nil {
		return
	}
	start := time.Now()
	session.Pump(ctx, c, rs)
	log.Info("bulk stream ended", "seconds", time.Since(start).Seconds())
}
