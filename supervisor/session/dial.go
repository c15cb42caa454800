// Package session is the supervisor's connection to the gateway: one gRPC client
// (TLS, sandbox bearer token on every call), the long-lived ConnectSupervisor stream
// with heartbeats and reconnect, the relays the gateway asks for, the main-process
// exit report and log shipping.
package session

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/openshell/openshell/internal/grpcopts"
)

// Endpoint is a parsed gateway address.
type Endpoint struct {
	Host   string // host name or IP, for TLS ServerName
	Addr   string // host:port to dial
	Secure bool
	// Socket is the path of a Unix socket to dial instead (unix:///path): the
	// sandbox's own gateway socket, plaintext, since the socket is the identity.
	Socket string
}

// ParseEndpoint parses "https://host:port", "http://host:port", bare "host:port"
// (TLS) or "unix:///path" (plaintext). The default port is 17670.
func ParseEndpoint(s string) (Endpoint, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Endpoint{}, errors.New("session: empty gateway endpoint: set OPENSHELL_ENDPOINT")
	}
	if p, ok := strings.CutPrefix(s, "unix://"); ok {
		if !strings.HasPrefix(p, "/") {
			return Endpoint{}, fmt.Errorf("session: gateway endpoint %q: want unix:///absolute/path", s)
		}
		return Endpoint{Host: "localhost", Addr: "localhost", Socket: p}, nil
	}
	secure := true
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("session: gateway endpoint %q: %w", s, err)
	}
	switch u.Scheme {
	case "https", "grpcs":
	case "http", "grpc":
		secure = false
	default:
		return Endpoint{}, fmt.Errorf("session: gateway endpoint %q: scheme must be https, http or unix", s)
	}
	host := u.Hostname()
	if host == "" {
		return Endpoint{}, fmt.Errorf("session: gateway endpoint %q has no host", s)
	}
	port := u.Port()
	if port == "" {
		port = "17670"
	}
	return Endpoint{Host: host, Addr: net.JoinHostPort(host, port), Secure: secure}, nil
}

// bearer attaches the sandbox token to every call.
type bearer struct {
	token  func() (string, error)
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	t, err := b.token()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + t}, nil
}

// RequireTransportSecurity is false so a plaintext test gateway works; production
// endpoints are https.
func (b bearer) RequireTransportSecurity() bool { return false }

// DialOptions configures Dial.
type DialOptions struct {
	Endpoint string
	// CAPEM or CAFile is the gateway CA; neither = system roots.
	CAPEM  []byte
	CAFile string
	// Token returns the sandbox token for each call (re-read so a rotated file works).
	Token func() (string, error)
	// Dial replaces the network dial; addr is the endpoint's host:port (the VM mode
	// ignores it and dials its vsock port). nil = TCP.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Dial creates the gRPC client connection (lazy: it connects on first use).
func Dial(o DialOptions) (*grpc.ClientConn, error) {
	ep, err := ParseEndpoint(o.Endpoint)
	if err != nil {
		return nil, err
	}
	if o.Token == nil {
		return nil, errors.New("session: DialOptions.Token is nil: give the sandbox token source")
	}
	var creds credentials.TransportCredentials
	if ep.Secure {
		cfg := &tls.Config{ServerName: ep.Host, MinVersion: tls.VersionTLS12}
		pem := o.CAPEM
		if len(pem) == 0 && o.CAFile != "" {
			if pem, err = os.ReadFile(o.CAFile); err != nil {
				return nil, fmt.Errorf("session: read gateway CA %s: %w", o.CAFile, err)
			}
		}
		if len(pem) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("session: gateway CA (%s) holds no PEM certificate", o.CAFile)
			}
			cfg.RootCAs = pool
		}
		creds = grpcopts.TLS(cfg)
	} else {
		creds = insecure.NewCredentials()
	}
	dial := o.Dial
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
		if ep.Socket != "" {
			dial = func(ctx context.Context, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", ep.Socket) }
		}
	}
	return grpc.NewClient("passthrough:///"+ep.Addr, append(grpcopts.Dial(creds),
		grpc.WithPerRPCCredentials(bearer{token: o.Token, secure: ep.Secure}),
		grpc.WithContextDialer(dial),
		// While the gateway is unreachable the transport redials on its own with this
		// backoff (1 s → 30 s, jittered); the session loop wakes as soon as the
		// transport is back (Client.Run), so a restarted gateway is seen promptly.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 30 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// A gateway that vanishes without closing TCP (VM host suspend, cable) is
		// noticed by keepalive rather than by waiting forever.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4<<20)),
	)...)
}
