package gatewayconfig_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/internal/cli/gatewayconfig"
)

type settingsServer struct {
	pb.UnimplementedOpenShellServer
	err      error
	settings map[string]*sandboxv1.SettingValue
}

func (s *settingsServer) GetGatewayConfig(context.Context, *sandboxv1.GetGatewayConfigRequest) (*sandboxv1.GetGatewayConfigResponse, error) {
	if s.err != nil {
		return nil, s.err
	}
	return &sandboxv1.GetGatewayConfigResponse{Settings: s.settings}, nil
}

func client(t *testing.T, srv pb.OpenShellServer) pb.OpenShellClient {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterOpenShellServer(gs, srv)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("passthrough:///"+l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return pb.NewOpenShellClient(cc)
}

func TestRead(t *testing.T) {
	want := map[string]*sandboxv1.SettingValue{"k": {Value: &sandboxv1.SettingValue_BoolValue{BoolValue: true}}}
	got, err := gatewayconfig.Read(t.Context(), client(t, &settingsServer{settings: want}))
	if err != nil || !got["k"].GetBoolValue() || len(got) != 1 {
		t.Fatalf("settings %v, %v", got, err)
	}
	// An older gateway without the RPC: no settings, no error.
	got, err = gatewayconfig.Read(t.Context(), client(t, &pb.UnimplementedOpenShellServer{}))
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("unimplemented: %v, %v", got, err)
	}
	got, err = gatewayconfig.Read(t.Context(), client(t, &settingsServer{}))
	if err != nil || got == nil {
		t.Fatalf("empty answer: %v, %v", got, err)
	}
	_, err = gatewayconfig.Read(t.Context(), client(t, &settingsServer{err: status.Error(codes.PermissionDenied, "config:read not granted")}))
	if err == nil || !strings.Contains(err.Error(), "config:read not granted") {
		t.Fatalf("refusal: %v", err)
	}
}
