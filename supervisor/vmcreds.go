package supervisor

// Provider credentials as the agent sees them. In a container the root supervisor
// fetches the real values from the gateway and its proxy puts them in (the agent
// cannot read or ptrace the supervisor). In a VM the guest never holds a value: the
// runner on the host keeps them and serves the guest placeholders and bound hosts
// only (egress.RunnerPlaceholders); the guest's proxy terminates TLS for the bound
// hosts and hands each request to the runner, which puts the values in
// (egress.RunnerOriginator). The gateway refuses the values to a VM guest's token.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"github.com/openshell/openshell/supervisor/credentials"
	"github.com/openshell/openshell/supervisor/egress"
)

// sandboxCredentials is what the proxy and the agent's environment need: the
// Store (values inside) or the Guest (placeholders only).
type sandboxCredentials interface {
	egress.Credentials
	Env() []string
}

var (
	_ sandboxCredentials = (*credentials.Store)(nil)
	_ sandboxCredentials = (*credentials.Guest)(nil)
)

// placeholderWait bounds the wait for the runner to have the credentials (it fetches
// them from the gateway as the VM boots).
var placeholderWait = 20 * time.Second

// loadCredentials creates the sandbox CA and bundle and the credentials for the
// network mode; n is the number of providers. A failure is logged and leaves creds
// nil (TLS termination unavailable) or without providers: the sandbox still starts.
func loadCredentials(ctx context.Context, cc grpc.ClientConnInterface, sandboxID string, o Options, log *slog.Logger) (creds sandboxCredentials, caFile string, n int) {
	if o.Network != NetworkVM {
		providers, err := fetchProviders(ctx, cc, sandboxID)
		if err != nil {
			log.Warn("provider credentials unavailable; the sandbox starts without them", "err", err)
		}
		store, caFile, err := installCA(o.Root, sandboxID, providers)
		if err != nil {
			log.Error("sandbox CA and provider credentials not installed: TLS termination is unavailable", "err", err)
			return nil, caFile, 0
		}
		return store, caFile, len(providers)
	}
	var ps []egress.PlaceholderProvider
	if o.EgressOpen != nil {
		set, err := fetchPlaceholders(ctx, o.EgressOpen)
		if err != nil {
			log.Warn("provider placeholders unavailable from the VM runner; the sandbox starts without them", "err", err)
		} else {
			ps = set.Providers
		}
	}
	// The CA whose bundle the warm-up wrote, or one made and written now.
	bundle := filepath.Join(o.Root, CABundlePath)
	ca := o.Warm.takeCA(bundle)
	var err error
	if ca != nil {
		caFile = bundle
	} else if ca, err = credentials.NewCA(sandboxID); err == nil {
		caFile, err = writeCABundle(o.Root, ca)
	}
	if err == nil {
		var g *credentials.Guest
		if g, err = credentials.NewGuest(ca, ps); err != nil {
			log.Error("the VM runner's provider placeholders are unusable; the sandbox starts without them", "err", err)
			g, err = credentials.NewGuest(ca, nil)
			ps = nil
		}
		if err == nil {
			return g, caFile, len(ps)
		}
	}
	log.Error("sandbox CA not installed: TLS termination is unavailable", "err", err)
	return nil, "", 0
}

// fetchPlaceholders asks the runner, retrying while it has not fetched the
// credentials from the gateway yet (up to placeholderWait).
func fetchPlaceholders(ctx context.Context, open func(context.Context) (net.Conn, error)) (*egress.PlaceholderSet, error) {
	ctx, cancel := context.WithTimeout(ctx, placeholderWait)
	defer cancel()
	// The runner of a VM claimed from a warm pool fetches the credentials from the
	// gateway as the claim arrives, tens of ms before the guest asks: retry soon at
	// first (the sandbox's start waits on this), then every 250 ms.
	wait := 20 * time.Millisecond
	for {
		set, err := egress.RunnerPlaceholders(ctx, open)
		if err == nil {
			return set, nil
		}
		if !errors.Is(err, egress.ErrNotReady) && ctx.Err() == nil {
			// A transient channel error while the VM comes up: retried too, within
			// the same bound.
			slog.Debug("provider placeholders: retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("supervisor: provider placeholders from the VM runner: %w", err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 250*time.Millisecond)
	}
}
