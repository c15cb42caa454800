package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/serviceproxy"
	"github.com/openshell/openshell/gateway/store"
	"github.com/openshell/openshell/gateway/validation"
)

// Services are named HTTP endpoints of a sandbox: a record that points at a port inside
// it, reachable through the gateway's services listener (package serviceproxy). The
// store row's name is the route's host label (<service>--<sandbox>, unique per
// workspace because service names never contain "--"); labels let the proxy and
// DeleteSandbox find rows by sandbox.
const (
	kindService         = "service"
	labelServiceSandbox = "openshell.sandbox"
	labelServiceSbID    = "openshell.sandbox-id"
	labelServiceName    = "openshell.service"
)

// serviceRouting is where the services listener serves (set by SetServiceRouting).
type serviceRouting struct {
	hostport string
	domain   string
}

// SetServiceRouting tells the server the address of its services listener (for the
// URLs it returns) and the services domain ("" = path routing only). Until it is
// called ExposeService answers FAILED_PRECONDITION.
func (s *Server) SetServiceRouting(hostport, domain string) {
	s.services.Store(&serviceRouting{hostport: hostport, domain: domain})
}

// Stopping is closed when Close begins (listeners owned elsewhere stop with it).
func (s *Server) Stopping() <-chan struct{} { return s.stopping }

// ServicesHandler is the HTTP handler for the services listener.
func (s *Server) ServicesHandler(domain string) *serviceproxy.Handler {
	return serviceproxy.New(domain, s.resolveService, s.dialService, s.log)
}

func validateServiceName(field, name string) error {
	if err := validation.Name(field, name); err != nil {
		return err
	}
	if strings.Contains(name, "--") {
		return invalidf("%s %q contains \"--\", which separates the service from the sandbox in host names; use single hyphens", field, name)
	}
	return nil
}

func (s *Server) ExposeService(ctx context.Context, req *openshellv1.ExposeServiceRequest) (*openshellv1.ServiceEndpointResponse, error) {
	if err := validation.Name("sandbox", req.GetSandbox()); err != nil {
		return nil, err
	}
	if err := validateServiceName("service", req.GetService()); err != nil {
		return nil, err
	}
	if p := req.GetTargetPort(); p == 0 || p > 65535 {
		return nil, invalidf("target_port %d is out of range; give the port the service listens on inside the sandbox (1-65535)", p)
	}
	if err := validation.Workspace(req.GetWorkspace()); err != nil {
		return nil, err
	}
	rt := s.services.Load()
	if rt == nil {
		return nil, status.Error(codes.FailedPrecondition, "this gateway has no services listener; start it with services_port (--services-port)")
	}
	if req.GetDomain() && rt.domain == "" {
		return nil, status.Error(codes.FailedPrecondition, "domain routing needs a services domain; set services_domain (--services-domain) in the gateway config, or expose without --domain for a path URL")
	}
	r, err := s.loadByName(ctx, req.GetWorkspace(), req.GetSandbox())
	if err != nil {
		return nil, err
	}
	ws := resolveWorkspace(req.GetWorkspace())
	ep := &openshellv1.ServiceEndpoint{SandboxId: r.id(), SandboxName: req.GetSandbox(), ServiceName: req.GetService(),
		TargetPort: req.GetTargetPort(), Domain: req.GetDomain()}
	data, err := proto.Marshal(ep)
	if err != nil {
		return nil, err
	}
	name := serviceproxy.HostLabel(req.GetSandbox(), req.GetService())
	labels := map[string]string{labelServiceSandbox: req.GetSandbox(), labelServiceSbID: r.id(), labelServiceName: req.GetService()}
	// Exposing an existing name again re-points it (a new port or routing mode).
	var o *store.Object
	if old, gerr := s.st.GetByName(ctx, kindService, ws, name); gerr == nil {
		old.Labels, old.Data = labels, data
		o, err = s.st.Update(ctx, old)
	} else if errors.Is(gerr, store.ErrNotFound) {
		o, err = s.st.Create(ctx, &store.Object{Kind: kindService, ID: uuid.NewString(), Workspace: ws, Name: name, Labels: labels, Data: data})
	} else {
		err = gerr
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("service exposed", "sandbox_id", r.id(), "service", req.GetService(), "port", req.GetTargetPort())
	return s.serviceView(o)
}

func (s *Server) serviceView(o *store.Object) (*openshellv1.ServiceEndpointResponse, error) {
	ep := &openshellv1.ServiceEndpoint{}
	if err := proto.Unmarshal(o.Data, ep); err != nil {
		return nil, fmt.Errorf("service record %s: %w", o.ID, err)
	}
	ep.Metadata = &datamodelv1.ObjectMeta{Id: o.ID, Name: ep.GetServiceName(), CreatedAtMs: o.CreatedAtMs,
		ResourceVersion: o.ResourceVersion, Workspace: o.Workspace}
	out := &openshellv1.ServiceEndpointResponse{Endpoint: ep}
	if rt := s.services.Load(); rt != nil {
		domain := ""
		if ep.GetDomain() {
			domain = rt.domain
		}
		out.Url = serviceproxy.URL(rt.hostport, serviceproxy.Route{Sandbox: ep.GetSandboxName(), Service: ep.GetServiceName()}, domain)
	}
	return out, nil
}

func (s *Server) getServiceObject(ctx context.Context, ws, sandbox, service string) (*store.Object, error) {
	if err := validation.Name("sandbox", sandbox); err != nil {
		return nil, err
	}
	if err := validateServiceName("service", service); err != nil {
		return nil, err
	}
	if err := validation.Workspace(ws); err != nil {
		return nil, err
	}
	o, err := s.st.GetByName(ctx, kindService, resolveWorkspace(ws), serviceproxy.HostLabel(sandbox, service))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("sandbox %s has no service %s (openshell service list %s): %w", sandbox, service, sandbox, store.ErrNotFound)
	}
	return o, err
}

func (s *Server) GetService(ctx context.Context, req *openshellv1.GetServiceRequest) (*openshellv1.ServiceEndpointResponse, error) {
	o, err := s.getServiceObject(ctx, req.GetWorkspace(), req.GetSandbox(), req.GetService())
	if err != nil {
		return nil, err
	}
	return s.serviceView(o)
}

func (s *Server) ListServices(ctx context.Context, req *openshellv1.ListServicesRequest) (*openshellv1.ListServicesResponse, error) {
	if req.GetAllWorkspaces() && req.GetWorkspace() != "" {
		return nil, invalidf("all_workspaces and workspace %q are mutually exclusive; set only one", req.GetWorkspace())
	}
	if err := validation.Workspace(req.GetWorkspace()); err != nil {
		return nil, err
	}
	var sel map[string]string
	if sb := req.GetSandbox(); sb != "" {
		if err := validation.Name("sandbox", sb); err != nil {
			return nil, err
		}
		sel = map[string]string{labelServiceSandbox: sb}
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = DefaultListLimit
	}
	objs, err := s.st.List(ctx, kindService, store.ListOptions{Workspace: resolveWorkspace(req.GetWorkspace()),
		AllWorkspaces: req.GetAllWorkspaces(), Selector: sel, Limit: min(limit, MaxListLimit), Offset: int(req.GetOffset())})
	if err != nil {
		return nil, err
	}
	out := &openshellv1.ListServicesResponse{}
	for _, o := range objs {
		v, err := s.serviceView(o)
		if err != nil {
			s.log.Error("skipping unreadable service record", "service_id", o.ID, "err", err)
			continue
		}
		out.Services = append(out.Services, v)
	}
	return out, nil
}

func (s *Server) DeleteService(ctx context.Context, req *openshellv1.DeleteServiceRequest) (*openshellv1.DeleteServiceResponse, error) {
	o, err := s.getServiceObject(ctx, req.GetWorkspace(), req.GetSandbox(), req.GetService())
	if errors.Is(err, store.ErrNotFound) {
		return &openshellv1.DeleteServiceResponse{Deleted: false}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := s.st.Delete(ctx, kindService, o.ID, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	return &openshellv1.DeleteServiceResponse{Deleted: true}, nil
}

// deleteServicesOf removes every service record of a deleted sandbox (best effort: the
// proxy also refuses records whose sandbox id no longer exists).
func (s *Server) deleteServicesOf(ctx context.Context, sandboxID string) {
	objs, err := s.st.List(ctx, kindService, store.ListOptions{AllWorkspaces: true, Selector: map[string]string{labelServiceSbID: sandboxID}})
	if err != nil {
		s.log.Warn("listing services of a deleted sandbox", "sandbox_id", sandboxID, "err", err)
		return
	}
	for _, o := range objs {
		if err := s.st.Delete(ctx, kindService, o.ID, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("deleting a service of a deleted sandbox", "sandbox_id", sandboxID, "service_id", o.ID, "err", err)
		}
	}
}

// resolveService finds the record a proxied request names. The URL carries no
// workspace, so the names must be unique across workspaces.
func (s *Server) resolveService(ctx context.Context, rt serviceproxy.Route) (serviceproxy.Target, error) {
	objs, err := s.st.List(ctx, kindService, store.ListOptions{AllWorkspaces: true, Limit: 2,
		Selector: map[string]string{labelServiceSandbox: rt.Sandbox, labelServiceName: rt.Service}})
	if err != nil {
		return serviceproxy.Target{}, err
	}
	switch len(objs) {
	case 0:
		return serviceproxy.Target{}, serviceproxy.ErrNotFound
	case 1:
	default:
		return serviceproxy.Target{}, fmt.Errorf("sandboxes named %s in workspaces %s and %s both expose %s: %w",
			rt.Sandbox, objs[0].Workspace, objs[1].Workspace, rt.Service, serviceproxy.ErrAmbiguous)
	}
	ep := &openshellv1.ServiceEndpoint{}
	if err := proto.Unmarshal(objs[0].Data, ep); err != nil {
		return serviceproxy.Target{}, fmt.Errorf("service record %s: %w", objs[0].ID, err)
	}
	if _, err := s.st.Get(ctx, kindSandbox, ep.GetSandboxId()); errors.Is(err, store.ErrNotFound) {
		return serviceproxy.Target{}, serviceproxy.ErrNotFound
	} else if err != nil {
		return serviceproxy.Target{}, err
	}
	return serviceproxy.Target{SandboxID: ep.GetSandboxId(), Port: ep.GetTargetPort()}, nil
}

// dialService opens a relay to 127.0.0.1:port inside the sandbox: the supervisor dials
// it in the agent's network namespace, exactly as for ForwardTcp.
func (s *Server) dialService(ctx context.Context, sandboxID string, port uint32) (net.Conn, error) {
	if _, err := s.requireReady(ctx, sandboxID); err != nil {
		return nil, err
	}
	conn, err := s.hub.OpenRelay(ctx, sandboxID, &openshellv1.RelayOpen{Target: &openshellv1.RelayOpen_Tcp{
		Tcp: &openshellv1.TcpRelayTarget{Host: "127.0.0.1", Port: port}}})
	if err != nil {
		return nil, err
	}
	return relayNetConn{conn, sandboxID + ":" + strconv.FormatUint(uint64(port), 10)}, nil
}

// relayNetConn adapts a relay to net.Conn for the HTTP transport (which sets no
// deadlines on plain connections).
type relayNetConn struct {
	rwc  io.ReadWriteCloser
	name string
}

type relayAddr string

func (a relayAddr) Network() string { return "relay" }
func (a relayAddr) String() string  { return string(a) }

var _ net.Conn = relayNetConn{}

func (c relayNetConn) Read(p []byte) (int, error)     { return c.rwc.Read(p) }
func (c relayNetConn) Write(p []byte) (int, error)    { return c.rwc.Write(p) }
func (c relayNetConn) Close() error                   { return c.rwc.Close() }
func (c relayNetConn) LocalAddr() net.Addr            { return relayAddr("gateway") }
func (c relayNetConn) RemoteAddr() net.Addr           { return relayAddr(c.name) }
func (relayNetConn) SetDeadline(time.Time) error      { return nil }
func (relayNetConn) SetReadDeadline(time.Time) error  { return nil }
func (relayNetConn) SetWriteDeadline(time.Time) error { return nil }

var _ http.Handler = (*serviceproxy.Handler)(nil)
