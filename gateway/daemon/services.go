package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/openshell/openshell/gateway"
	"github.com/openshell/openshell/gateway/config"
)

// startServices opens the services listener (loopback: requests there reach sandbox
// ports without a client certificate, so only this machine may send them) and serves
// the service proxy until srv closes.
func startServices(cfg *config.Config, srv *gateway.Server, log *slog.Logger) error {
	lis, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(cfg.ServicesPort)))
	if err != nil {
		return fmt.Errorf("services listener on 127.0.0.1:%d: %w; pick another services_port (--services-port), or 0 for a free one", cfg.ServicesPort, err)
	}
	h := srv.ServicesHandler(cfg.ServicesDomain)
	srv.SetServiceRouting(lis.Addr().String(), cfg.ServicesDomain)
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	go func() {
		<-srv.Stopping()
		_ = hs.Close()
		h.Close()
	}()
	log.Info("services listener", "addr", lis.Addr().String(), "domain", cfg.ServicesDomain)
	return nil
}
