package kubernetes

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/openshell/openshell/drivers/containers"
)

// Defaults filled by Config.withDefaults.
const (
	// DefaultSupervisorImagePath is where the gateway image keeps the static
	// supervisor binary that the init container copies out.
	DefaultSupervisorImagePath = "/usr/local/bin/openshell-sandbox"
	DefaultImagePullPolicy     = string(corev1.PullIfNotPresent)
	DefaultResync              = containers.DefaultResync
	DefaultMinMemory           = containers.DefaultMinMemory
	// serviceAccountNamespaceFile names the namespace of the pod the gateway runs in.
	serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
)

// Toleration is one pod toleration from the driver config (the fields of a
// Kubernetes toleration, in the config's snake case).
type Toleration struct {
	Key               string `json:"key,omitempty" toml:"key"`
	Operator          string `json:"operator,omitempty" toml:"operator"` // Equal (default) or Exists
	Value             string `json:"value,omitempty" toml:"value"`
	Effect            string `json:"effect,omitempty" toml:"effect"` // NoSchedule, PreferNoSchedule, NoExecute or empty
	TolerationSeconds *int64 `json:"toleration_seconds,omitempty" toml:"toleration_seconds"`
}

// Config configures the Kubernetes driver (`[drivers.kubernetes]`).
type Config struct {
	// Kubeconfig is a kubeconfig file; empty = in-cluster config when the gateway
	// runs in a pod, else $KUBECONFIG or ~/.kube/config.
	Kubeconfig string `json:"kubeconfig,omitempty" toml:"kubeconfig"`
	// Context picks a kubeconfig context; empty = the file's current context.
	Context string `json:"context,omitempty" toml:"context"`
	// Namespace holds every Sandbox, pod, Secret and PVC the driver makes; empty =
	// the gateway's own namespace (its service account's), else "default".
	Namespace string `json:"namespace,omitempty" toml:"namespace"`
	// APIVersion forces the agent-sandbox API version ("v1beta1" or "v1alpha1");
	// empty = v1beta1 when the cluster serves it, else v1alpha1.
	APIVersion string `json:"api_version,omitempty" toml:"api_version"`

	// SupervisorImage is an image holding the static supervisor binary (the
	// gateway's own image). Required.
	SupervisorImage string `json:"supervisor_image" toml:"supervisor_image"`
	// SupervisorImagePath is the supervisor's path inside SupervisorImage.
	SupervisorImagePath string `json:"supervisor_image_path,omitempty" toml:"supervisor_image_path"`
	// ImagePullPolicy applies to the sandbox and supervisor images: Always,
	// IfNotPresent (default) or Never.
	ImagePullPolicy string `json:"image_pull_policy,omitempty" toml:"image_pull_policy"`

	// GatewayEndpoint is the URL the supervisor dials: the gateway Service, e.g.
	// https://openshell.openshell.svc:17670. Required.
	GatewayEndpoint string `json:"gateway_endpoint" toml:"gateway_endpoint"`
	// GatewayHostIP, when set, makes host.openshell.internal resolve to this address
	// inside sandbox pods (a gateway outside the cluster, e.g. on the node's host).
	GatewayHostIP string `json:"gateway_host_ip,omitempty" toml:"gateway_host_ip"`
	// CAPEM is the gateway CA bundle handed to each supervisor.
	CAPEM []byte `json:"-" toml:"-"`

	// DefaultImage is used when a sandbox names no image.
	DefaultImage string `json:"default_image,omitempty" toml:"default_image"`
	// DefaultCPU and DefaultMemory (Kubernetes quantities) apply when a sandbox asks
	// for neither a request nor a limit; empty = none.
	DefaultCPU    string `json:"default_cpu,omitempty" toml:"default_cpu"`
	DefaultMemory string `json:"default_memory,omitempty" toml:"default_memory"`
	// MinMemory is the smallest memory limit accepted, in bytes; default 64 MiB.
	MinMemory int64 `json:"min_memory,omitempty" toml:"min_memory"`

	// RuntimeClassName runs sandbox pods under a RuntimeClass (e.g. kata for VM
	// isolation); a sandbox's platform_config runtime_class_name overrides it.
	RuntimeClassName string `json:"runtime_class_name,omitempty" toml:"runtime_class_name"`
	// NodeSelector and Tolerations place sandbox pods.
	NodeSelector map[string]string `json:"node_selector,omitempty" toml:"node_selector"`
	Tolerations  []Toleration      `json:"tolerations,omitempty" toml:"tolerations"`
	// StorageSize, when set, gives each sandbox a PersistentVolumeClaim of this size
	// for /sandbox, kept while the sandbox is stopped; empty = an emptyDir (lost on
	// stop). StorageClass picks its class; empty = the cluster default.
	StorageSize  string `json:"storage_size,omitempty" toml:"storage_size"`
	StorageClass string `json:"storage_class,omitempty" toml:"storage_class"`

	// LogLevel is the supervisor's default log level when the sandbox sets none.
	LogLevel string `json:"log_level,omitempty" toml:"log_level"`
	// Labels are added to everything the driver creates and required on all it
	// lists and watches: they scope one driver instance on a shared cluster.
	Labels map[string]string `json:"labels,omitempty" toml:"labels"`
	// ResyncInterval is how often the informers re-send every sandbox; default 30s.
	ResyncInterval time.Duration `json:"resync_interval,omitempty" toml:"resync_interval"`
}

// withDefaults returns a copy with defaults filled in; readFile reads the service
// account namespace file (a parameter so tests need no pod).
func (c Config) withDefaults(readFile func(string) ([]byte, error)) Config {
	if c.Namespace == "" && readFile != nil {
		if b, err := readFile(serviceAccountNamespaceFile); err == nil {
			c.Namespace = strings.TrimSpace(string(b))
		}
	}
	if c.Namespace == "" {
		c.Namespace = "default"
	}
	if c.SupervisorImagePath == "" {
		c.SupervisorImagePath = DefaultSupervisorImagePath
	}
	if c.ImagePullPolicy == "" {
		c.ImagePullPolicy = DefaultImagePullPolicy
	}
	if c.MinMemory == 0 {
		c.MinMemory = DefaultMinMemory
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = DefaultResync
	}
	return c
}

// Validate names every bad field and how to fix it. It expects defaults filled.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("kubernetes driver config: "+format, args...))
	}
	if c.Kubeconfig != "" {
		if _, err := os.Stat(c.Kubeconfig); err != nil {
			bad("kubeconfig: %w (point it at a kubeconfig file, or leave it empty to use the in-cluster config or $KUBECONFIG)", err)
		}
	}
	if msgs := validation.IsDNS1123Label(c.Namespace); len(msgs) > 0 {
		bad("namespace %q: %s", c.Namespace, strings.Join(msgs, "; "))
	}
	if c.APIVersion != "" && c.APIVersion != versionBeta && c.APIVersion != versionAlpha {
		bad("api_version %q: use %s, %s or leave it empty to pick what the cluster serves", c.APIVersion, versionBeta, versionAlpha)
	}
	if c.SupervisorImage == "" {
		bad("supervisor_image is empty: set it to the gateway's image (it holds the supervisor the init container copies into each sandbox pod)")
	}
	if !path.IsAbs(c.SupervisorImagePath) {
		bad("supervisor_image_path %q is not an absolute path inside supervisor_image", c.SupervisorImagePath)
	}
	if !slices.Contains([]string{string(corev1.PullAlways), string(corev1.PullIfNotPresent), string(corev1.PullNever)}, c.ImagePullPolicy) {
		bad("image_pull_policy %q: use Always, IfNotPresent or Never", c.ImagePullPolicy)
	}
	if c.GatewayEndpoint == "" {
		bad("gateway_endpoint is empty: set it to the gateway Service URL, e.g. https://openshell.%s.svc:17670", c.Namespace)
	} else if u, err := url.Parse(c.GatewayEndpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("gateway_endpoint %q: want an http(s) URL such as https://openshell.%s.svc:17670", c.GatewayEndpoint, c.Namespace)
	}
	if c.GatewayHostIP != "" && net.ParseIP(c.GatewayHostIP) == nil {
		bad("gateway_host_ip %q is not an IP address", c.GatewayHostIP)
	}
	cs := containers.Settings{DefaultCPU: c.DefaultCPU, DefaultMemory: c.DefaultMemory, MinMemory: c.MinMemory, ResyncInterval: c.ResyncInterval}
	cs.CheckLimits(bad)
	if c.RuntimeClassName != "" {
		if msgs := validation.IsDNS1123Subdomain(c.RuntimeClassName); len(msgs) > 0 {
			bad("runtime_class_name %q: %s", c.RuntimeClassName, strings.Join(msgs, "; "))
		}
	}
	for k, v := range c.NodeSelector {
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			bad("node_selector key %q: %s", k, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			bad("node_selector[%q] value %q: %s", k, v, strings.Join(msgs, "; "))
		}
	}
	for i, t := range c.Tolerations {
		if t.Key != "" {
			if msgs := validation.IsQualifiedName(t.Key); len(msgs) > 0 {
				bad("tolerations[%d].key %q: %s", i, t.Key, strings.Join(msgs, "; "))
			}
		}
		switch t.Operator {
		case "", string(corev1.TolerationOpEqual):
		case string(corev1.TolerationOpExists):
			if t.Value != "" {
				bad("tolerations[%d]: operator Exists takes no value (drop value %q or use Equal)", i, t.Value)
			}
		default:
			bad("tolerations[%d].operator %q: use Equal or Exists", i, t.Operator)
		}
		if t.Key == "" && t.Operator != string(corev1.TolerationOpExists) {
			bad("tolerations[%d]: an empty key needs operator Exists (it tolerates every taint)", i)
		}
		switch t.Effect {
		case "", string(corev1.TaintEffectNoSchedule), string(corev1.TaintEffectPreferNoSchedule), string(corev1.TaintEffectNoExecute):
		default:
			bad("tolerations[%d].effect %q: use NoSchedule, PreferNoSchedule, NoExecute or leave it empty", i, t.Effect)
		}
		if t.TolerationSeconds != nil && t.Effect != string(corev1.TaintEffectNoExecute) {
			bad("tolerations[%d]: toleration_seconds applies only to effect NoExecute", i)
		}
	}
	if c.StorageSize != "" {
		if q, err := resource.ParseQuantity(c.StorageSize); err != nil {
			bad("storage_size %q: %v (use a Kubernetes quantity such as 10Gi)", c.StorageSize, err)
		} else if q.Sign() <= 0 {
			bad("storage_size %q must be positive", c.StorageSize)
		}
	}
	if c.StorageClass != "" {
		if c.StorageSize == "" {
			bad("storage_class %q is set but storage_size is empty: set storage_size (e.g. 10Gi) to give sandboxes a volume", c.StorageClass)
		}
		if msgs := validation.IsDNS1123Subdomain(c.StorageClass); len(msgs) > 0 {
			bad("storage_class %q: %s", c.StorageClass, strings.Join(msgs, "; "))
		}
	}
	for k, v := range c.Labels {
		if strings.HasPrefix(k, "openshell.ai/") {
			bad("labels: %q: the openshell.ai/ prefix is reserved for the driver", k)
		} else if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			bad("labels key %q: %s", k, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			bad("labels[%q] value %q: %s", k, v, strings.Join(msgs, "; "))
		}
	}
	return errors.Join(errs...)
}

// tolerations renders the config's tolerations.
func (c Config) tolerations() []corev1.Toleration {
	var out []corev1.Toleration
	for _, t := range c.Tolerations {
		out = append(out, corev1.Toleration{
			Key:               t.Key,
			Operator:          corev1.TolerationOperator(t.Operator),
			Value:             t.Value,
			Effect:            corev1.TaintEffect(t.Effect),
			TolerationSeconds: t.TolerationSeconds,
		})
	}
	return out
}
