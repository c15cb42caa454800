//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	sandboxv1 "github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/guest/channel"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// probeGateway attacks the gateway from inside the guest through the runner's
// gateway port, where the guest speaks plaintext gRPC to the sandbox's gateway socket.
// It runs as the guest's PID 1 with the instance secret, so it gets past the runner's
// admission, which an agent cannot (it has neither the secret nor a vsock socket):
// whatever it is refused, an agent is refused too. otherID and otherToken are another
// sandbox's (the test passes them as the command's arguments). Each outcome is "ok"
// or the gRPC status code's name; "no preamble" is what the runner did with a stream
// that does not start with the secret.
func probeGateway(secret wire.Secret, cfg *bootstrap.Config, otherID, otherToken string) map[string]string {
	out := map[string]string{}
	cc, err := grpc.NewClient("passthrough:///gateway",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return channel.DialHostAs(ctx, channel.PortGateway, secret)
		}))
	if err != nil {
		out["client"] = err.Error()
		return out
	}
	defer cc.Close()
	api := pb.NewOpenShellClient(cc)
	call := func(token string, f func(ctx context.Context) error) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		if err := f(ctx); err != nil {
			return status.Code(err).String()
		}
		return "ok"
	}
	config := func(id string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := api.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: id}, grpc.WaitForReady(true))
			return err
		}
	}
	// The control: its own token for its own sandbox works over this path.
	out["own_token_own_config"] = call(cfg.Token, config(cfg.SandboxID))
	// A forged token: its own with the signature altered.
	forged := []byte(cfg.Token)
	forged[len(forged)-2] ^= 0x01
	out["forged_token"] = call(string(forged), config(cfg.SandboxID))
	// Another sandbox's real token, on this sandbox's socket.
	out["other_token"] = call(otherToken, config(otherID))
	// Its own token, asking about the other sandbox.
	out["own_token_other_config"] = call(cfg.Token, config(otherID))
	// Admin RPCs with its own token.
	out["admin_list_sandboxes"] = call(cfg.Token, func(ctx context.Context) error {
		_, err := api.ListSandboxes(ctx, &pb.ListSandboxesRequest{})
		return err
	})
	out["admin_delete_other"] = call(cfg.Token, func(ctx context.Context) error {
		_, err := api.DeleteSandbox(ctx, &pb.DeleteSandboxRequest{Name: otherID})
		return err
	})
	// Without the instance preamble, straight gRPC on the gateway port.
	raw, err := grpc.NewClient("passthrough:///gateway",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return channel.DialHost(ctx, channel.PortGateway)
		}))
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+cfg.Token)
		_, err = pb.NewOpenShellClient(raw).GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: cfg.SandboxID})
		cancel()
		raw.Close()
		out["no_preamble_own_token"] = status.Code(err).String()
		if err == nil {
			out["no_preamble_own_token"] = "ok"
		}
	}
	b, _ := json.Marshal(out)
	fmt.Printf("openshell-testguest: gateway-probes %s\n", b)
	return out
}
