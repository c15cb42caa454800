package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/drivers/drivertest"
)

// tcpSupervisor is a supervisor session that answers TCP relay targets by dialing
// ports[port] on this host: a stand-in for the real supervisor's dial inside the
// sandbox's network namespace (the Docker e2e test uses the real one).
func (e *env) tcpSupervisor(id string, ports map[uint32]string) *sync.Map {
	e.t.Helper()
	c := e.sandboxClient(id)
	ctx, cancel := context.WithCancel(context.Background())
	ctx = asInstance(ctx, "svc")
	stream, err := c.ConnectSupervisor(ctx)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if err := stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_Hello{
		Hello: &openshellv1.SupervisorHello{SandboxId: id, InstanceId: "svc"}}}); err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		cancel()
		e.t.Fatal(err)
	}
	var seen sync.Map // "host:port" asked for → true
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			ro := m.GetRelayOpen()
			if ro == nil {
				continue
			}
			seen.Store(fmt.Sprintf("%s:%d", ro.GetTcp().GetHost(), ro.GetTcp().GetPort()), true)
			addr, ok := ports[ro.GetTcp().GetPort()]
			if !ok {
				_ = stream.Send(&openshellv1.SupervisorMessage{Payload: &openshellv1.SupervisorMessage_RelayOpenResult{
					RelayOpenResult: &openshellv1.RelayOpenResult{ChannelId: ro.GetChannelId(), Error: "connection refused"}}})
				continue
			}
			go tcpRelay(ctx, c, ro.GetChannelId(), addr)
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	return &seen
}

func tcpRelay(ctx context.Context, c openshellv1.OpenShellClient, channel, addr string) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer conn.Close()
	rs, err := c.RelayStream(ctx)
	if err != nil {
		return
	}
	if err := rs.Send(&openshellv1.RelayFrame{Payload: &openshellv1.RelayFrame_Init{Init: &openshellv1.RelayInit{ChannelId: channel}}}); err != nil {
		return
	}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				if rs.Send(&openshellv1.RelayFrame{Payload: &openshellv1.RelayFrame_Data{Data: append([]byte(nil), buf[:n]...)}}) != nil {
					return
				}
			}
			if err != nil {
				_ = rs.CloseSend()
				return
			}
		}
	}()
	for {
		f, err := rs.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				conn.(*net.TCPConn).CloseWrite()
			}
			return
		}
		if _, err := conn.Write(f.GetData()); err != nil {
			return
		}
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServices(t *testing.T) {
	e := startEnv(t, t.TempDir(), drivertest.NewMemDriver())
	ctx := t.Context()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from inside, path %s", r.URL.Path)
	}))
	defer backend.Close()

	a := e.create("alpha").GetMetadata().GetId()
	e.create("beta")
	seen := e.tcpSupervisor(a, map[uint32]string{8080: backend.Listener.Addr().String()})
	e.waitPhase("alpha", phaseReady)

	// Without a services listener the gateway says which setting to use.
	_, err := e.user.ExposeService(ctx, &openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "web", TargetPort: 8080})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "services_port") {
		t.Errorf("no listener: %v", err)
	}
	front := httptest.NewServer(e.srv.ServicesHandler(""))
	defer front.Close()
	e.srv.SetServiceRouting(front.Listener.Addr().String(), "")

	// Bad input names the field.
	for _, tc := range []struct {
		req   *openshellv1.ExposeServiceRequest
		field string
	}{
		{&openshellv1.ExposeServiceRequest{Service: "web", TargetPort: 80}, "sandbox"},
		{&openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "Web", TargetPort: 80}, "service \"Web\""},
		{&openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "a--b", TargetPort: 80}, "service \"a--b\""},
		{&openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "", TargetPort: 80}, "service is empty"},
		{&openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "web", TargetPort: 0}, "target_port 0"},
		{&openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "web", TargetPort: 70000}, "target_port 70000"},
		{&openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "web", TargetPort: 80, Workspace: "Bad_WS"}, "workspace"},
	} {
		_, err := e.user.ExposeService(ctx, tc.req)
		wantCode(t, err, codes.InvalidArgument)
		if !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%v: error %v does not name %s", tc.req, err, tc.field)
		}
	}
	_, err = e.user.ExposeService(ctx, &openshellv1.ExposeServiceRequest{Sandbox: "nosuch", Service: "web", TargetPort: 80})
	wantCode(t, err, codes.NotFound)
	_, err = e.user.ExposeService(ctx, &openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "web", TargetPort: 8080, Domain: true})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "services_domain") {
		t.Errorf("domain without a configured domain: %v", err)
	}

	web, err := e.user.ExposeService(ctx, &openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "web", TargetPort: 8080})
	if err != nil {
		t.Fatal(err)
	}
	wantURL := "http://" + front.Listener.Addr().String() + "/alpha/web/"
	if web.GetUrl() != wantURL || web.GetEndpoint().GetSandboxId() != a || web.GetEndpoint().GetTargetPort() != 8080 {
		t.Fatalf("ExposeService = %v, want url %s", web, wantURL)
	}
	if code, body := httpGet(t, web.GetUrl()+"x/y"); code != 200 || body != "hello from inside, path /x/y" {
		t.Fatalf("GET through the service URL: %d %q", code, body)
	}
	if _, ok := seen.Load("127.0.0.1:8080"); !ok {
		t.Error("the relay did not ask the supervisor for 127.0.0.1:8080")
	}
	// A second service on a port nothing listens on: 502, naming it.
	if _, err := e.user.ExposeService(ctx, &openshellv1.ExposeServiceRequest{Sandbox: "alpha", Service: "api", TargetPort: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.user.ExposeService(ctx, &openshellv1.ExposeServiceRequest{Sandbox: "beta", Service: "web", TargetPort: 8080}); err != nil {
		t.Fatal(err)
	}
	if code, body := httpGet(t, "http://"+front.Listener.Addr().String()+"/alpha/api/"); code != http.StatusBadGateway || !strings.Contains(body, "service api of sandbox alpha") {
		t.Errorf("service on a closed port: %d %q", code, body)
	}

	got, err := e.user.GetService(ctx, &openshellv1.GetServiceRequest{Sandbox: "alpha", Service: "web"})
	if err != nil || got.GetUrl() != wantURL || got.GetEndpoint().GetMetadata().GetId() == "" {
		t.Fatalf("GetService = %v, %v", got, err)
	}
	_, err = e.user.GetService(ctx, &openshellv1.GetServiceRequest{Sandbox: "alpha", Service: "nope"})
	wantCode(t, err, codes.NotFound)
	names := func(sb string) []string {
		l, err := e.user.ListServices(ctx, &openshellv1.ListServicesRequest{Sandbox: sb})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range l.GetServices() {
			out = append(out, s.GetEndpoint().GetSandboxName()+"/"+s.GetEndpoint().GetServiceName())
		}
		sort.Strings(out)
		return out
	}
	if n := fmt.Sprint(names("alpha")); n != "[alpha/api alpha/web]" {
		t.Errorf("ListServices(alpha) = %s", n)
	}
	if n := fmt.Sprint(names("")); n != "[alpha/api alpha/web beta/web]" {
		t.Errorf("ListServices() = %s", n)
	}

	// Delete: the URL answers 404, a second delete reports nothing deleted.
	d, err := e.user.DeleteService(ctx, &openshellv1.DeleteServiceRequest{Sandbox: "alpha", Service: "web"})
	if err != nil || !d.GetDeleted() {
		t.Fatalf("DeleteService = %v, %v", d, err)
	}
	if code, _ := httpGet(t, web.GetUrl()); code != http.StatusNotFound {
		t.Errorf("deleted service answers %d, want 404", code)
	}
	if d, err := e.user.DeleteService(ctx, &openshellv1.DeleteServiceRequest{Sandbox: "alpha", Service: "web"}); err != nil || d.GetDeleted() {
		t.Errorf("second DeleteService = %v, %v", d, err)
	}

	// Deleting a sandbox deletes its services; the other sandbox's stay.
	if _, err := e.user.DeleteSandbox(ctx, &openshellv1.DeleteSandboxRequest{Name: "alpha"}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("alpha")
	if n := fmt.Sprint(names("")); n != "[beta/web]" {
		t.Errorf("after deleting sandbox alpha, ListServices() = %s", n)
	}
	if code, _ := httpGet(t, "http://"+front.Listener.Addr().String()+"/alpha/api/"); code != http.StatusNotFound {
		t.Errorf("service of a deleted sandbox answers %d, want 404", code)
	}
}
