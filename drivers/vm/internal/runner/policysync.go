package runner

// The runner's copy of the sandbox's network policy, for the egress re-check outside
// the VM boundary. The compute-driver contract carries no policy, so the runner asks
// the gateway itself, as the guest's supervisor does: GetSandboxConfig with the
// sandbox's own token, over the same TCP address it bridges guest sessions to.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	sandboxv1 "github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/supervisor/bootstrap"
	"github.com/openshell/openshell/supervisor/policy"
	"github.com/openshell/openshell/supervisor/session"
)

// policySyncInterval is how often the gateway is asked for the sandbox's policy (the
// guest's supervisor polls at the same pace, so both ends switch together).
var policySyncInterval = 2 * time.Second

// policySyncMaxBackoff caps the wait between failed polls.
const policySyncMaxBackoff = 30 * time.Second

// policySync holds the sandbox's current compiled network policy.
type policySync struct {
	cc  grpc.ClientConnInterface
	id  string
	log *slog.Logger
	cur atomic.Pointer[policy.Compiled]

	mu sync.Mutex
	// hash is the policy.Hash of the gateway policy in cur ("" = none from the gateway
	// yet: cur is the bootstrap policy or nothing).
	hash    string
	version uint32
}

// newPolicySync starts from the bootstrap's PolicyYAML when there is one (the guest's
// supervisor starts from it too); without it no policy is known until the first
// successful poll. A bootstrap policy that does not parse is an error.
func newPolicySync(cc grpc.ClientConnInterface, sandboxID string, bootstrapYAML []byte, log *slog.Logger) (*policySync, error) {
	s := &policySync{cc: cc, id: sandboxID, log: log}
	if len(bootstrapYAML) > 0 {
		c, err := compileYAML(bootstrapYAML)
		if err != nil {
			return nil, fmt.Errorf("runner: the bootstrap policy of sandbox %s for the egress re-check: %w", sandboxID, err)
		}
		s.cur.Store(c)
	}
	return s, nil
}

// Current is the policy to check against, nil while none is known.
func (s *policySync) Current() *policy.Compiled { return s.cur.Load() }

// Run polls at once and then every policySyncInterval (backing off while the gateway
// fails) until ctx ends.
func (s *policySync) Run(ctx context.Context) {
	fails := 0
	for {
		wait := policySyncInterval
		if err := s.poll(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			wait = session.Backoff(fails, policySyncInterval, policySyncMaxBackoff)
			fails++
			lvl := slog.LevelDebug
			if fails == 1 || s.Current() == nil {
				lvl = slog.LevelWarn
			}
			s.log.Log(ctx, lvl, "egress policy: cannot fetch the sandbox policy from the gateway", "err", err,
				"loaded", s.Current() != nil, "retry_in", wait.Round(time.Millisecond))
		} else {
			if fails > 0 {
				s.log.Info("egress policy: the gateway answers again")
			}
			fails = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// poll asks the gateway once and applies the answer.
func (s *policySync) poll(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := pb.NewOpenShellClient(s.cc).GetSandboxConfig(cctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: s.id})
	if err != nil {
		return fmt.Errorf("GetSandboxConfig for sandbox %s: %w (%s)", s.id, err, status.Code(err))
	}
	s.apply(resp)
	return nil
}

// apply mirrors what the guest's supervisor does with the same answer, so that both
// ends enforce the same policy: no policy in the answer keeps the current one (the
// restrictive default when there is none); an invalid one denies everything unless
// the gateway asks to retain the last valid one.
func (s *policySync) apply(resp *sandboxv1.GetSandboxConfigResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := resp.GetVersion()
	if resp.GetPolicy() == nil {
		if s.cur.Load() == nil {
			s.cur.Store(policy.MustCompile(policy.Default()))
			s.log.Info("egress policy: the gateway has no policy for the sandbox; using the default (deny all)", "version", v)
		}
		return
	}
	h := policy.Hash(resp.GetPolicy())
	if h == s.hash {
		return
	}
	p, err := policy.FromProto(resp.GetPolicy())
	var c *policy.Compiled
	if err == nil {
		c, err = policy.Compile(p)
	}
	if err != nil {
		if resp.GetPolicyValidationFailureMode() == "retain_last_valid" && s.cur.Load() != nil {
			s.log.Error("egress policy: the gateway's policy is invalid; keeping the last valid one", "version", v, "err", err)
		} else {
			s.log.Error("egress policy: the gateway's policy is invalid; denying all egress", "version", v, "err", err)
			s.cur.Store(policy.MustCompile(policy.Default()))
		}
		s.hash, s.version = h, v
		return
	}
	s.cur.Store(c)
	s.log.Info("egress policy: sandbox policy loaded from the gateway", "version", v, "previous", s.version)
	s.hash, s.version = h, v
}

// dialGateway opens the runner's gRPC connection to the gateway as the sandbox: the
// endpoint, CA and token of the guest's bootstrap config (TLS names the gateway as the
// guest does, host.openshell.internal; plaintext on the sandbox socket), dialed where
// guest sessions are bridged.
func dialGateway(b *bootstrap.Config, gw *gatewayTarget) (*grpc.ClientConn, error) {
	if b.Endpoint == "" {
		return nil, errors.New("runner: the bootstrap config has no gateway endpoint: the egress policy cannot be fetched (re-provision the sandbox)")
	}
	if b.Token == "" && b.TokenFile == "" {
		return nil, errors.New("runner: the bootstrap config has no sandbox token: the egress policy cannot be fetched (re-provision the sandbox)")
	}
	cc, err := session.Dial(session.DialOptions{
		Endpoint: b.Endpoint,
		CAPEM:    b.CAPEM,
		CAFile:   b.CAFile,
		Token:    b.LoadToken,
		Dial: func(ctx context.Context, _ string) (net.Conn, error) {
			c, _, err := gw.dial(ctx, 0)
			return c, err
		},
	})
	if err != nil {
		return nil, fmt.Errorf("runner: gateway connection for the egress policy: %w", err)
	}
	return cc, nil
}

// startEgress serves the egress port with the sandbox-policy re-check, polling the
// gateway, and the sandbox's provider credentials (fetched once, see secrets.go),
// until stop is called; stop closes l and the open tunnels and waits for the
// goroutines.
func startEgress(ctx context.Context, l net.Listener, spec *Spec, gw *gatewayTarget, log *slog.Logger) (stop func(), err error) {
	cc, err := dialGateway(&spec.Bootstrap, gw)
	if err != nil {
		return nil, err
	}
	ps, err := newPolicySync(cc, spec.SandboxID, spec.Bootstrap.PolicyYAML, log)
	if err != nil {
		cc.Close()
		return nil, err
	}
	up, err := upstreamTLS(spec.Egress)
	if err != nil {
		cc.Close()
		return nil, err
	}
	ss := &secretsSync{cc: cc, id: spec.SandboxID, cred: spec.Egress.RunnerCredential, log: log}
	pctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); ps.Run(pctx) }()
	go func() { defer wg.Done(); ss.Run(pctx) }()
	relay := newEgressRelay(spec.Egress, ps.Current, ss.Current, up, log)
	go func() {
		defer wg.Done()
		if err := relay.Serve(pctx, l); err != nil {
			log.Error("egress: the guest's egress port stopped serving", "err", err)
		}
	}()
	return func() {
		cancel()
		l.Close()
		wg.Wait()
		cc.Close()
	}, nil
}
