package e2e

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/openshell/openshell/internal/kubetest"
)

// The kubernetes driver under test runs sandbox pods on the test cluster's node
// (scripts/setup-kubernetes.sh). The gateway stays on the host and listens on every
// address, so pods reach it at the node bridge's host address, which the driver
// names host.openshell.internal in each pod; its certificate covers that name.
const kubeBridgeIP = "10.244.0.1"

// kubeNamespace is the namespace the kubernetes driver uses in this test process.
var kubeNamespace string

// requireKube checks the cluster and its node, and makes a namespace for the test.
func requireKube(t *testing.T) {
	t.Helper()
	c := kubetest.RequireNode(t)
	kubeNamespace = c.Namespace(t)
}

// driverArgs are the extra `gateway start` flags the driver under test needs.
func (h *harness) driverArgs() []string {
	if driver() != "kubernetes" {
		return nil
	}
	cfg := filepath.Join(h.home, "gateway-kube.toml")
	body := fmt.Sprintf(`[drivers.kubernetes]
kubeconfig = %q
namespace = %q
supervisor_image = %q
image_pull_policy = "Never"
gateway_endpoint = "https://host.openshell.internal:%d"
gateway_host_ip = %q
`, kubetest.KubeconfigPath(), kubeNamespace,
		cmp.Or(os.Getenv("OPENSHELL_GATEWAY_IMAGE"), "docker.io/openshell/gateway:0.1.0"), h.port, kubeBridgeIP)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return []string{"--bind-address", "0.0.0.0", "--config", cfg}
}
