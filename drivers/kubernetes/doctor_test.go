package kubernetes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/kubetest"
)

// Probe against the test cluster: the Sandbox API and the namespace are reported; an
// unknown namespace is an error that says how to create it.
func TestProbe(t *testing.T) {
	c := kubetest.Require(t)
	ns := c.Namespace(t)
	info, err := Probe(t.Context(), Config{Kubeconfig: c.Kubeconfig, Namespace: ns}, 10*time.Second)
	if err != nil || !strings.Contains(info, group+"/") || !strings.Contains(info, "namespace "+ns) {
		t.Errorf("Probe = %q, %v; want the Sandbox API and namespace %s", info, err, ns)
	}
	_, err = Probe(t.Context(), Config{Kubeconfig: c.Kubeconfig, Namespace: "no-such-ns-" + ns}, 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "kubectl create namespace no-such-ns-"+ns) {
		t.Errorf("unknown namespace: err = %v, want the kubectl command that fixes it", err)
	}
}

// Without any kubeconfig, doctor does not probe; a missing named kubeconfig is an
// error that names the setting.
func TestConfigured(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("KUBECONFIG", filepath.Join(home, "none"))
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if Configured(Config{}) {
		t.Errorf("Configured with no kubeconfig anywhere")
	}
	kc := filepath.Join(home, "kc")
	if err := os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", kc)
	if !Configured(Config{}) {
		t.Errorf("not Configured with KUBECONFIG=%s", kc)
	}
	_, err := Probe(t.Context(), Config{Kubeconfig: filepath.Join(home, "missing")}, time.Second)
	if err == nil || !strings.Contains(err.Error(), "kubeconfig in [drivers.kubernetes]") {
		t.Errorf("missing kubeconfig: err = %v", err)
	}
}
