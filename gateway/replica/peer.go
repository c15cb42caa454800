package replica

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/peerv1"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/internal/grpcopts"
)

// ErrNotReplica: the caller of the peer service is not a gateway replica.
var ErrNotReplica = errors.New("caller is not a gateway replica")

// TLS returns the peer service's server and client configs. Both sides present the
// gateway's certificate from the shared PKI and accept only a peer that presents a
// certificate issued by the same CA for the same key: another gateway replica. A CLI
// user's certificate (same CA, another key) or a sandbox (no certificate) is refused
// during the handshake. Host names are not checked (replicas dial each other by pod
// IP, which the certificate does not name): the key pin is the identity.
func TLS(b *pki.Bundle) (server, client *tls.Config, err error) {
	if b == nil || len(b.Server.Certificate) == 0 || b.CA == nil {
		return nil, nil, errors.New("replica: the peer service needs the gateway certificate and CA (TLS cannot be disabled between replicas)")
	}
	own, err := x509.ParseCertificate(b.Server.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("replica: gateway certificate: %w", err)
	}
	verify := func(raw [][]byte, _ [][]*x509.Certificate) error { return verifyPeer(raw, own, b.CertPool()) }
	server = &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{b.Server},
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: verify,
	}
	client = &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{b.Server},
		InsecureSkipVerify:    true, // replaced by verify: CA chain plus key pin, no host name
		VerifyPeerCertificate: verify,
	}
	return server, client, nil
}

func verifyPeer(raw [][]byte, own *x509.Certificate, roots *x509.CertPool) error {
	if len(raw) == 0 {
		return fmt.Errorf("no certificate presented: %w", ErrNotReplica)
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("certificate does not parse: %v: %w", err, ErrNotReplica)
	}
	inter := x509.NewCertPool()
	for _, r := range raw[1:] {
		if c, err := x509.ParseCertificate(r); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("certificate %q is not from the gateway CA: %v: %w", leaf.Subject.CommonName, err, ErrNotReplica)
	}
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, own.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("certificate %q is not the gateway's (another key): %w", leaf.Subject.CommonName, ErrNotReplica)
	}
	return nil
}

// Peer serves the peer service on its own listener.
type Peer struct {
	peerv1.UnimplementedPeerServer
	hub  *hub.Hub
	log  *slog.Logger
	gs   *grpc.Server
	lis  net.Listener
	done chan error
}

// Listen starts the peer service on addr with the server TLS config from TLS.
func Listen(addr string, serverTLS *tls.Config, h *hub.Hub, log *slog.Logger) (*Peer, error) {
	if serverTLS == nil {
		return nil, errors.New("replica: no peer TLS config")
	}
	if log == nil {
		log = slog.Default()
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("peer listener %s: %w; pick another --peer-address port", addr, err)
	}
	p := &Peer{hub: h, log: log, lis: lis, done: make(chan error, 1),
		gs: grpc.NewServer(append(grpcopts.Server(grpcopts.TLS(serverTLS)), grpc.MaxRecvMsgSize(1<<20))...)}
	peerv1.RegisterPeerServer(p.gs, p)
	go func() { p.done <- p.gs.Serve(lis) }()
	log.Info("peer service listening", "addr", lis.Addr().String())
	return p, nil
}

// Addr is the listener's address.
func (p *Peer) Addr() net.Addr { return p.lis.Addr() }

// Close stops the peer service (relays in flight end).
func (p *Peer) Close() error {
	p.gs.Stop()
	<-p.done
	return nil
}

// Relay implements peerv1.PeerServer.
func (p *Peer) Relay(stream grpc.BidiStreamingServer[peerv1.PeerRelayFrame, peerv1.PeerRelayFrame]) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	open := first.GetOpen()
	switch {
	case open == nil:
		return status.Error(codes.InvalidArgument, "the first Peer.Relay frame must be open")
	case open.GetSandboxId() == "":
		return status.Error(codes.InvalidArgument, "open.sandbox_id is empty")
	case open.GetTarget() == nil:
		return status.Error(codes.InvalidArgument, "open.target is missing")
	}
	conn, err := p.hub.OpenLocalRelay(ctx, open.GetSandboxId(), open.GetTarget())
	if err != nil {
		return toStatus(err)
	}
	defer conn.Close()
	opened := &peerv1.PeerRelayOpened{}
	if k := conn.HostKey(); k != nil {
		opened.HostKey = k.Marshal()
	}
	if err := stream.Send(&peerv1.PeerRelayFrame{Payload: &peerv1.PeerRelayFrame_Opened{Opened: opened}}); err != nil {
		return err
	}
	return hub.Pump(ctx, conn,
		func() ([]byte, error) { f, err := stream.Recv(); return f.GetData(), err },
		func(d []byte) error {
			return stream.Send(&peerv1.PeerRelayFrame{Payload: &peerv1.PeerRelayFrame_Data{Data: d}})
		})
}

func toStatus(err error) error {
	switch {
	case errors.Is(err, hub.ErrNoSession):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, hub.ErrTooManyRelays):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}
