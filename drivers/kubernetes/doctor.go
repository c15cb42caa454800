package kubernetes

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// Configured reports whether a cluster configuration can be found without contacting
// a cluster: the kubeconfig named in cfg, an in-cluster config, $KUBECONFIG or
// ~/.kube/config. `openshell doctor` probes a cluster only then.
func Configured(cfg Config) bool {
	if cfg.Kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return true
	}
	for _, p := range filepath.SplitList(os.Getenv(clientcmd.RecommendedConfigPathEnvVar)) {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	_, err := os.Stat(clientcmd.RecommendedHomeFile)
	return err == nil
}

// Probe connects to the cluster as the driver would at start (API server, Sandbox
// API version, namespace, permission to list Sandboxes), within timeout, and
// describes what it found; its error names the fix, as New's does. Fields that only
// shape pods are not needed.
func Probe(ctx context.Context, cfg Config, timeout time.Duration) (string, error) {
	cfg = cfg.withDefaults(os.ReadFile)
	rc, err := loadRest(cfg)
	if err != nil {
		return "", err
	}
	rc.Timeout = timeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d, err := connect(ctx, cfg, rc)
	if err != nil {
		return "", err
	}
	defer d.Close()
	return d.info + ", namespace " + d.cfg.Namespace, nil
}
