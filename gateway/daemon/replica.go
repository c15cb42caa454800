package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/openshell/openshell/gateway/config"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/replica"
	"github.com/openshell/openshell/gateway/store"
)

// replicas is this gateway's part in a set of replicas sharing one database: the
// peer service the others call and the lease with its session records.
type replicas struct {
	peer *replica.Peer
	reg  *replica.Registry
}

// startReplicas joins the replica set when peer_address is configured (nil, nil
// otherwise: a single gateway needs nothing).
func startReplicas(ctx context.Context, cfg *config.Config, bundle *pki.Bundle, st store.Store, h *hub.Hub, log *slog.Logger) (_ *replicas, retErr error) {
	if cfg.PeerAddress == "" {
		return nil, nil
	}
	ss, ok := st.(store.Sessions)
	if !ok {
		return nil, errors.New("peer_address is set but the store cannot record session holders; use database_url (PostgreSQL) shared by every replica")
	}
	adv, err := cfg.PeerAdvertise()
	if err != nil {
		return nil, err
	}
	srvTLS, cliTLS, err := replica.TLS(bundle)
	if err != nil {
		return nil, err
	}
	id := cfg.ReplicaID
	if id == "" {
		id = replica.DefaultID()
	}
	reg, err := replica.New(ss, replica.Config{ID: id, PeerAddress: adv, ClientTLS: cliTLS, Log: log})
	if err != nil {
		return nil, err
	}
	listen, err := replica.ParsePeerAddress("peer_address", cfg.PeerAddress, false) // adds the default port
	if err != nil {
		return nil, err
	}
	p, err := replica.Listen(listen, srvTLS, h, log.With("replica_id", id))
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			_ = p.Close()
		}
	}()
	if err := reg.Start(ctx, h); err != nil {
		return nil, fmt.Errorf("joining the gateway replicas: %w", err)
	}
	return &replicas{peer: p, reg: reg}, nil
}

// Close stops the peer service and gives the lease up.
func (r *replicas) Close() error {
	if r == nil {
		return nil
	}
	return errors.Join(r.peer.Close(), r.reg.Close())
}
