package e2e

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	c.LockSandboxCRD(t, false) // the CRD stays as it is while this test's sandboxes exist
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

// importToKubeNode copies an image the test built in dockerd into the test node's
// containerd (the pods use image_pull_policy Never) and removes it there at cleanup.
// Other drivers read the image from their engine directly: nothing to do.
func importToKubeNode(t *testing.T, ref string) {
	t.Helper()
	if driver() != "kubernetes" {
		return
	}
	env, err := exec.Command("../scripts/setup-kubernetes.sh", "env").Output()
	if err != nil {
		t.Fatalf("scripts/setup-kubernetes.sh env: %v", err)
	}
	var ctr, sock string
	for _, l := range strings.Split(string(env), "\n") {
		if v, ok := strings.CutPrefix(l, "OPENSHELL_KUBE_CTR="); ok {
			ctr = v
		}
		if v, ok := strings.CutPrefix(l, "OPENSHELL_KUBE_CONTAINERD_SOCK="); ok {
			sock = v
		}
	}
	if ctr == "" || sock == "" {
		t.Fatalf("scripts/setup-kubernetes.sh env names no ctr or containerd socket:\n%s", env)
	}
	save := exec.Command("docker", "save", ref)
	imp := exec.Command(ctr, "--address", sock, "-n", "k8s.io", "images", "import", "-")
	pipe, err := save.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	imp.Stdin = pipe
	var saveErr, impOut strings.Builder
	save.Stderr = &saveErr
	imp.Stdout, imp.Stderr = &impOut, &impOut
	if err := save.Start(); err != nil {
		t.Fatalf("docker save %s: %v", ref, err)
	}
	impErr := imp.Run()
	if err := save.Wait(); err != nil || impErr != nil {
		t.Fatalf("import %s into the test node: docker save: %v %s; ctr import: %v %s", ref, err, saveErr.String(), impErr, impOut.String())
	}
	full := ref
	if strings.Count(strings.SplitN(ref, "/", 2)[0], ".") == 0 {
		full = "docker.io/" + ref // containerd names Docker Hub-style references in full
	}
	t.Cleanup(func() {
		if out, err := exec.Command(ctr, "--address", sock, "-n", "k8s.io", "images", "rm", full).CombinedOutput(); err != nil {
			t.Logf("remove %s from the test node: %v %s", full, err, out)
		}
	})
}
