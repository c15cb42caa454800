// Command sockprobe is run inside containers by the per-sandbox socket tests
// (e2e/sandboxsock_test.go): it calls the gateway through a Unix socket with a
// given token, or tries TCP addresses, and prints one JSON line of results.
//
//	sockprobe -socket PATH [-token T] -call config|list [-sandbox ID]
//	sockprobe -tcp host:port,host:port,...
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
)

func main() {
	sock := flag.String("socket", "", "gateway socket path")
	token := flag.String("token", "", "bearer token (empty: none)")
	call := flag.String("call", "config", "config (GetSandboxConfig) or list (ListSandboxes)")
	sandbox := flag.String("sandbox", "", "sandbox id named in GetSandboxConfig")
	tcp := flag.String("tcp", "", "comma-separated host:port list to connect to")
	flag.Parse()
	out := map[string]string{}
	if *tcp != "" {
		for _, a := range strings.Split(*tcp, ",") {
			c, err := net.DialTimeout("tcp", a, 2*time.Second)
			if err != nil {
				out[a] = errName(err)
				continue
			}
			c.Close()
			out[a] = "connected"
		}
	} else {
		out["stat"] = "ok"
		if _, err := os.Stat(*sock); err != nil {
			out["stat"] = errName(err)
		}
		out["code"], out["msg"] = callGateway(*sock, *token, *call, *sandbox)
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

func callGateway(sock, token, call, sandbox string) (string, string) {
	cc, err := grpc.NewClient("passthrough:///localhost",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		return "client", err.Error()
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	api := openshellv1.NewOpenShellClient(cc)
	switch call {
	case "list":
		_, err = api.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{})
	default:
		_, err = api.GetSandboxConfig(ctx, &sandboxv1.GetSandboxConfigRequest{SandboxId: sandbox}, grpc.WaitForReady(false))
	}
	st := status.Convert(err)
	return st.Code().String(), st.Message()
}

func errName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ENOENT:
			return "ENOENT"
		case syscall.EACCES:
			return "EACCES"
		case syscall.ECONNREFUSED:
			return "ECONNREFUSED"
		case syscall.EHOSTUNREACH:
			return "EHOSTUNREACH"
		case syscall.ENETUNREACH:
			return "ENETUNREACH"
		}
		return errno.Error()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}
