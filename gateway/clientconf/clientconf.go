// Package clientconf is the CLI side of a gateway registration: where a named
// gateway's endpoint and client credentials live (~/.config/openshell/gateways/<name>/:
// endpoint, ca.crt, client.crt, client.key) and how to dial it.
package clientconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

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
	Endpoint string // https://host:port or http://host:port
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
	return &Gateway{Name: name, Dir: dir, Endpoint: strings.TrimSpace(string(b))}, nil
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

// Dial opens a client connection (lazy: errors surface on the first call).
func (g *Gateway) Dial(ctx context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
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
