// Package clientconf is the CLI side of a gateway registration: where a named
// gateway's endpoint and client credentials live (~/.config/openshell/gateways/<name>/:
// endpoint, ca.crt, client.crt, client.key, and socket for a gateway on this machine)
// and how to dial it: a local gateway's Unix socket when it is there, else the
// endpoint over TCP with mTLS.
package clientconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/internal/grpcopts"
)

// DefaultName is the gateway name used when --gateway is not given.
const DefaultName = "default"

// File names inside a gateway's client directory.
const (
	EndpointFile = "endpoint"
	CAFile       = "ca.crt"
	CertFile     = "client.crt"
	KeyFile      = "client.key"
	// SocketFile holds unix:///path of a local gateway's socket.
	SocketFile = "socket"
)

// ErrNotConfigured means no endpoint file exists for the gateway name.
var ErrNotConfigured = errors.New("gateway not configured")

// ConfigHome is $XDG_CONFIG_HOME/openshell, falling back to ~/.config/openshell.
func ConfigHome() (string, error) {
	base := os.Getenv("XDG_CONFIG_HOME")
	if !filepath.IsAbs(base) {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no config directory: %w; set HOME or XDG_CONFIG_HOME", err)
		}
		base = filepath.Join(home, ".config")
	}
	return filepath.Join(base, "openshell"), nil
}

// Dir returns the client directory for a gateway name.
func Dir(name string) (string, error) {
	if name == "" {
		name = DefaultName
	}
	if strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return "", fmt.Errorf("gateway name %q must not contain path separators", name)
	}
	h, err := ConfigHome()
	if err != nil {
		return "", err
	}
	return filepath.Join(h, "gateways", name), nil
}

type notConfigured struct{ msg string }

func (e *notConfigured) Error() string        { return e.msg }
func (e *notConfigured) Is(target error) bool { return target == ErrNotConfigured }

// Gateway is a loaded registration.
type Gateway struct {
	Name     string
	Dir      string
	Endpoint string // https://host:port, http://host:port or unix:///path
	// Socket is a local gateway's unix:///path, tried before Endpoint ("" = none).
	Socket string
}

// Load reads a gateway's registration.
func Load(name string) (*Gateway, error) {
	dir, err := Dir(name)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, EndpointFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &notConfigured{msg: fmt.Sprintf("gateway %q is not configured (no %s); start one with `openshell gateway start`",
			name, filepath.Join(dir, EndpointFile))}
	}
	if err != nil {
		return nil, err
	}
	g := &Gateway{Name: name, Dir: dir, Endpoint: strings.TrimSpace(string(b))}
	if b, err := os.ReadFile(filepath.Join(dir, SocketFile)); err == nil {
		g.Socket = strings.TrimSpace(string(b))
	}
	return g, nil
}

// WriteSocket records a local gateway's socket path, or removes the record when
// path is "" (the gateway serves no socket).
func WriteSocket(name, path string) error {
	dir, err := Dir(name)
	if err != nil {
		return err
	}
	f := filepath.Join(dir, SocketFile)
	if path == "" {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(f, []byte("unix://"+path+"\n"), 0o600)
}

// WriteEndpoint records the endpoint (creating the directory 0700).
func WriteEndpoint(name, endpoint string) (string, error) {
	dir, err := Dir(name)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, EndpointFile), []byte(endpoint+"\n"), 0o600)
}

// Target splits the endpoint into a gRPC target and whether TLS is used.
func (g *Gateway) Target() (string, bool, error) {
	ep := g.Endpoint
	if !strings.Contains(ep, "://") {
		return ep, true, nil
	}
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" {
		return "", false, fmt.Errorf("gateway %q: endpoint %q is not a URL like https://127.0.0.1:17670; fix %s", g.Name, ep, filepath.Join(g.Dir, EndpointFile))
	}
	switch u.Scheme {
	case "https":
		return u.Host, true, nil
	case "http":
		return u.Host, false, nil
	}
	return "", false, fmt.Errorf("gateway %q: endpoint scheme %q must be http or https", g.Name, u.Scheme)
}

// TLSConfig builds the mTLS client configuration from the directory's files.
func (g *Gateway) TLSConfig() (*tls.Config, error) {
	b, err := pki.LoadClient(g.Dir)
	if err != nil {
		return nil, fmt.Errorf("gateway %q: %w", g.Name, err)
	}
	return b.ClientTLSConfig(), nil
}

// Dial opens a client connection: over the local socket when the registration has
// one that answers (plain gRPC; the gateway knows the caller from the kernel), else
// over TCP (lazy: errors surface on the first call).
func (g *Gateway) Dial(ctx context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if path, ok := unixPath(g.Endpoint); ok {
		return g.dialSocket(ctx, path, false, opts)
	}
	if path, ok := unixPath(g.Socket); ok {
		cc, err := g.dialSocket(ctx, path, true, opts)
		if cc != nil || err != nil {
			return cc, err
		}
	}
	target, useTLS, err := g.Target()
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if useTLS {
		tc, err := g.TLSConfig()
		if err != nil {
			return nil, err
		}
		creds = grpcopts.TLS(tc)
	}
	opts = append(grpcopts.Dial(creds), opts...)
	return grpc.NewClient("passthrough:///"+target, opts...)
}

// unixPath returns the path of a unix:///path (or unix:/path) URL.
func unixPath(ep string) (string, bool) {
	p, ok := strings.CutPrefix(ep, "unix://")
	if !ok {
		p, ok = strings.CutPrefix(ep, "unix:")
	}
	return p, ok && filepath.IsAbs(p)
}

// dialSocket connects to a gateway's Unix socket once to see that it answers, and
// hands that connection to gRPC. With fallback, a socket that is absent or has no
// listener (the gateway is stopped, or was never started here) returns (nil, nil)
// so the caller uses TCP. Being refused by the file's permissions is an error that
// says who this user is and the fix.
func (g *Gateway) dialSocket(ctx context.Context, path string, fallback bool, opts []grpc.DialOption) (*grpc.ClientConn, error) {
	var d net.Dialer
	first, err := d.DialContext(ctx, "unix", path)
	switch {
	case err == nil:
	case fallback && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOTDIR)):
		return nil, nil
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		return nil, fmt.Errorf("gateway %q: permission denied on its socket %s: this user (uid %d) is neither its owner nor in its group; ask the gateway's owner to add you to its socket_group, or use a registration with client certificates over TCP", g.Name, path, os.Geteuid())
	default:
		return nil, fmt.Errorf("gateway %q: socket %s: %w; is the gateway running? (`openshell gateway start`)", g.Name, path, err)
	}
	var mu sync.Mutex
	take := func() net.Conn {
		mu.Lock()
		defer mu.Unlock()
		c := first
		first = nil
		return c
	}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		if c := take(); c != nil {
			return c, nil
		}
		return d.DialContext(ctx, "unix", path)
	}
	opts = append(append(grpcopts.Dial(insecure.NewCredentials()), grpc.WithContextDialer(dialer)), opts...)
	cc, err := grpc.NewClient("passthrough:///localhost", opts...)
	if err != nil {
		if c := take(); c != nil {
			c.Close()
		}
		return nil, err
	}
	return cc, nil
}

// Dialer returns a dial function for the gateway named by name() at call time (so a
// --gateway flag parsed later is honoured). Its signature matches
// internal/cli/sshcmds.DialFunc.
func Dialer(name func() string) func(ctx context.Context) (*grpc.ClientConn, error) {
	return func(ctx context.Context) (*grpc.ClientConn, error) {
		g, err := Load(name())
		if err != nil {
			return nil, err
		}
		return g.Dial(ctx)
	}
}
