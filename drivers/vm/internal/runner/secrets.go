package runner

// Provider credentials of a VM sandbox live here, on the host, and never in the
// guest. The runner fetches the real values from the gateway (GetSandboxProviderEnvironment
// with the sandbox token AND the runner credential of its spec, see package
// hostcred: the guest holds the same token, so the gateway gives values only to a
// caller that also shows the credential, which never enters the guest), builds the
// credentials.Store (placeholder → value) and serves the guest only placeholders and
// bound hosts (GET /v1/credentials on the egress port). The guest's proxy terminates
// TLS for bound hosts as before and hands each request to the runner (originated TLS,
// see supervisor/egress/relay.go); the runner puts the values in and makes the TLS
// connection to the server itself.
//
// Why a credential in the runner's spec rather than a channel the guest cannot
// reach: the runner already reaches the gateway on the same address it bridges guest
// sessions to, so a separate channel would need its own listener and auth on both
// ends; a key the gateway creates (0600 in the VM driver's state dir) and an HMAC per
// sandbox is the smallest thing the guest cannot forge.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/hostcred"
	"github.com/openshell/openshell/supervisor/credentials"
	proxy "github.com/openshell/openshell/supervisor/egress"
	"github.com/openshell/openshell/supervisor/session"
)

// secretsMaxBackoff caps the wait between failed fetches.
const secretsMaxBackoff = 30 * time.Second

// secretsRetry is the first wait after a failed fetch.
var secretsRetry = 500 * time.Millisecond

// secretsSync fetches the sandbox's provider credentials once (retrying while the
// gateway is unreachable) and holds the store.
type secretsSync struct {
	cc   grpc.ClientConnInterface
	id   string
	cred string
	log  *slog.Logger
	cur  atomic.Pointer[credentials.Store]
}

// Current is the store, nil until the fetch ended (the relay answers 503 meanwhile).
func (s *secretsSync) Current() proxy.HostSecrets {
	if st := s.cur.Load(); st != nil {
		return st
	}
	return nil
}

// Run fetches until it has an answer or ctx ends. An answer that gives no values
// (no runner credential, refused, invalid providers) leaves an empty store: the
// sandbox runs without credentials, saying so, rather than waiting forever.
func (s *secretsSync) Run(ctx context.Context) {
	if s.cred == "" {
		s.log.Warn("provider credentials: the runner has no runner credential (VM driver started without --runner-key-file): the sandbox gets no provider credentials")
		s.set(nil)
		return
	}
	for fails := 0; ; fails++ {
		ps, retry, err := s.fetch(ctx)
		if err == nil {
			s.set(ps)
			return
		}
		if !retry {
			s.log.Error("provider credentials: the gateway refused them; the sandbox runs without", "err", err)
			s.set(nil)
			return
		}
		wait := session.Backoff(fails, secretsRetry, secretsMaxBackoff)
		if fails == 0 || wait == secretsMaxBackoff {
			s.log.Warn("provider credentials: cannot fetch them from the gateway yet", "err", err, "retry_in", wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (s *secretsSync) fetch(ctx context.Context) (ps []credentials.Provider, retry bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cctx = metadata.AppendToOutgoingContext(cctx, hostcred.MetadataKey, s.cred)
	resp, err := pb.NewOpenShellClient(s.cc).GetSandboxProviderEnvironment(cctx, &pb.GetSandboxProviderEnvironmentRequest{SandboxId: s.id, SupportsStaticCredentialBindings: true})
	switch status.Code(err) {
	case codes.OK:
		ps, err = credentials.ProvidersFromEnvironment(resp)
		return ps, false, err
	case codes.NotFound, codes.Unimplemented:
		return nil, false, nil
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted, codes.Canceled:
		return nil, true, fmt.Errorf("GetSandboxProviderEnvironment for sandbox %s: %w", s.id, err)
	default:
		return nil, false, fmt.Errorf("GetSandboxProviderEnvironment for sandbox %s: %w", s.id, err)
	}
}

// set builds the store. Its CA is never used (the guest terminates TLS with its own);
// credentials.New wants one.
func (s *secretsSync) set(ps []credentials.Provider) {
	ca, err := credentials.NewCA(s.id)
	if err == nil {
		var st *credentials.Store
		if st, err = credentials.New(ca, ps); err == nil {
			s.cur.Store(st)
			names := make([]string, len(ps))
			for i, p := range ps {
				names[i] = p.Name
			}
			s.log.Info("provider credentials loaded on the host; the guest gets placeholders only", "providers", names)
			return
		}
	}
	s.log.Error("provider credentials unusable; the sandbox runs without", "err", err)
	if ca != nil {
		if st, err := credentials.New(ca, nil); err == nil {
			s.cur.Store(st)
		}
	}
}

// upstreamTLS is the TLS template of originated connections: the system roots plus
// the operator's extra CA bundle.
func upstreamTLS(p EgressPolicy) (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if p.UpstreamCAFile != "" {
		b, err := os.ReadFile(p.UpstreamCAFile)
		if err != nil {
			return nil, fmt.Errorf("runner: egress upstream CA file (--egress-ca-file): %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("runner: egress upstream CA file %s holds no PEM certificate (--egress-ca-file)", p.UpstreamCAFile)
		}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
