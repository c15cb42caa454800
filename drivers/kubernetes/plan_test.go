package kubernetes

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	sandboxv1beta1 "sigs.k8s.io/agent-sandbox/api/v1beta1"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
)

func testConfig() Config {
	return Config{
		Namespace:       "sbx",
		SupervisorImage: "openshell/gateway:test",
		GatewayEndpoint: "https://openshell.sbx.svc:17670",
		CAPEM:           []byte("-----BEGIN CERTIFICATE-----\n"),
		DefaultImage:    "busybox:1",
	}.withDefaults(nil)
}

func testSandbox() *computev1.DriverSandbox {
	return &computev1.DriverSandbox{
		Id: "id-1", Name: "box-1", Workspace: "team-a",
		Spec: &computev1.DriverSandboxSpec{
			SandboxToken: "secret-token",
			Command:      []string{"sleep", "60"},
			Template: &computev1.DriverSandboxTemplate{
				Image:  "example.com/agent:1",
				Labels: map[string]string{"team": "a"},
				Resources: &computev1.DriverResourceRequirements{
					CpuRequest: "250m", CpuLimit: "1", MemoryLimit: "512Mi",
				},
			},
		},
	}
}

func TestSandboxShape(t *testing.T) {
	cfg := testConfig()
	cfg.RuntimeClassName = "kata"
	cfg.NodeSelector = map[string]string{"pool": "agents"}
	cfg.Tolerations = []Toleration{{Key: "agents", Operator: "Exists", Effect: "NoSchedule"}}
	cfg.StorageSize, cfg.StorageClass = "5Gi", "fast"
	cfg.GatewayHostIP = "10.88.0.1"
	cfg.Labels = map[string]string{"run": "t1"}
	sb := testSandbox()
	sb.Spec.ResourceRequirements = &computev1.ResourceRequirements{Gpu: &computev1.GpuResourceRequirements{Count: ptr(uint32(2))}}
	p, err := cfg.plan(sb)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	obj := cfg.sandbox(p)
	spec := obj.Spec.PodTemplate.Spec
	if obj.Name != "box-1" || obj.Namespace != "sbx" {
		t.Errorf("Sandbox %s/%s, want sbx/box-1", obj.Namespace, obj.Name)
	}
	for k, v := range map[string]string{
		drivers.LabelManagedBy: drivers.ManagedByValue, drivers.LabelSandboxID: "id-1",
		drivers.LabelSandboxName: "box-1", drivers.LabelWorkspace: "team-a", "team": "a", "run": "t1",
	} {
		if obj.Labels[k] != v || obj.Spec.PodTemplate.ObjectMeta.Labels[k] != v {
			t.Errorf("label %s = %q (pod %q), want %q", k, obj.Labels[k], obj.Spec.PodTemplate.ObjectMeta.Labels[k], v)
		}
	}
	if obj.Annotations[drivers.LabelImage] != "example.com/agent:1" {
		t.Errorf("image annotation = %q", obj.Annotations[drivers.LabelImage])
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("the sandbox pod gets a service account token")
	}
	if spec.RuntimeClassName == nil || *spec.RuntimeClassName != "kata" {
		t.Errorf("runtimeClassName = %v", spec.RuntimeClassName)
	}
	if spec.NodeSelector["pool"] != "agents" || len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("placement: nodeSelector %v tolerations %v", spec.NodeSelector, spec.Tolerations)
	}
	if len(spec.HostAliases) != 1 || spec.HostAliases[0].IP != "10.88.0.1" || spec.HostAliases[0].Hostnames[0] != drivers.GatewayHost {
		t.Errorf("hostAliases = %v", spec.HostAliases)
	}

	// The init container copies the supervisor from the gateway image.
	if len(spec.InitContainers) != 1 {
		t.Fatalf("init containers: %d", len(spec.InitContainers))
	}
	ic := spec.InitContainers[0]
	if ic.Image != cfg.SupervisorImage || !slices.Equal(ic.Command, []string{DefaultSupervisorImagePath, installArg, drivers.SupervisorPath}) {
		t.Errorf("init container %s %v", ic.Image, ic.Command)
	}
	if ic.SecurityContext.RunAsNonRoot == nil || !*ic.SecurityContext.RunAsNonRoot || len(ic.SecurityContext.Capabilities.Add) != 0 {
		t.Errorf("init container runs with privileges: %+v", ic.SecurityContext)
	}

	c := spec.Containers[0]
	if c.Image != "example.com/agent:1" || !slices.Equal(c.Command, []string{drivers.SupervisorPath}) {
		t.Errorf("container %s %v", c.Image, c.Command)
	}
	sc := c.SecurityContext
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("allowPrivilegeEscalation not false (no-new-privileges)")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("drop = %v", sc.Capabilities.Drop)
	}
	var add []string
	for _, a := range sc.Capabilities.Add {
		add = append(add, string(a))
	}
	if !slices.Equal(add, containers.SupervisorCapabilities) {
		t.Errorf("capabilities %v, want the shared supervisor set %v", add, containers.SupervisorCapabilities)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	if m := mounts["/opt/openshell/bin"]; m.Name != supervisorVolume || !m.ReadOnly {
		t.Errorf("supervisor mount %+v, want read-only %s", m, supervisorVolume)
	}
	if m := mounts[drivers.BootstrapDir]; m.Name != bootstrapVolume || !m.ReadOnly {
		t.Errorf("bootstrap mount %+v", m)
	}
	if m := mounts[workDir]; m.Name != workVolume {
		t.Errorf("/sandbox mount %+v", m)
	}
	for _, v := range spec.Volumes {
		if v.Name == bootstrapVolume && (v.Secret == nil || v.Secret.SecretName != "box-1-openshell-bootstrap") {
			t.Errorf("bootstrap volume %+v", v)
		}
		if v.Name == workVolume {
			t.Errorf("/sandbox is a pod volume although storage_size is set: the controller adds it from the claim")
		}
	}
	if n := len(obj.Spec.VolumeClaimTemplates); n != 1 {
		t.Fatalf("claims %d", n)
	}
	claim := obj.Spec.VolumeClaimTemplates[0]
	if claim.Name != workVolume || *claim.Spec.StorageClassName != "fast" || claim.Spec.Resources.Requests.Storage().String() != "5Gi" || claim.Labels[drivers.LabelSandboxID] != "id-1" {
		t.Errorf("claim %+v", claim)
	}

	// Requests and limits: each defaults to the other.
	want := map[string]string{"req cpu": "250m", "lim cpu": "1", "req memory": "512Mi", "lim memory": "512Mi", "req gpu": "2", "lim gpu": "2"}
	got := map[string]string{
		"req cpu": c.Resources.Requests.Cpu().String(), "lim cpu": c.Resources.Limits.Cpu().String(),
		"req memory": c.Resources.Requests.Memory().String(), "lim memory": c.Resources.Limits.Memory().String(),
		"req gpu": qstr(c.Resources.Requests[GPUResource]), "lim gpu": qstr(c.Resources.Limits[GPUResource]),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %s, want %s", k, got[k], v)
		}
	}

	// The token never travels in the object: only the Secret has it.
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
		if strings.Contains(e.Value, "secret-token") {
			t.Errorf("env %s carries the token", e.Name)
		}
	}
	if env["OPENSHELL_ENDPOINT"] != cfg.GatewayEndpoint {
		t.Errorf("endpoint env = %q (env %v)", env["OPENSHELL_ENDPOINT"], env)
	}
	u, err := toUnstructured(obj, versionBeta)
	if err != nil {
		t.Fatal(err)
	}
	if s, _, _ := unstructured.NestedString(u.Object, "spec", "operatingMode"); s != "Running" {
		t.Errorf("v1beta1 operatingMode = %q", s)
	}
	if strings.Contains(strings.ToLower(asJSON(t, u)), "secret-token") {
		t.Errorf("the Sandbox object carries the token")
	}
}

func qstr(q resource.Quantity) string { return q.String() }

func asJSON(t *testing.T, u *unstructured.Unstructured) string {
	b, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestAlphaObjects(t *testing.T) {
	cfg := testConfig()
	p, err := cfg.plan(testSandbox())
	if err != nil {
		t.Fatal(err)
	}
	obj := cfg.sandbox(p)
	obj.Spec.OperatingMode = sandboxv1beta1.SandboxOperatingModeSuspended
	u, err := toUnstructured(obj, versionAlpha)
	if err != nil {
		t.Fatal(err)
	}
	if u.GetAPIVersion() != "agents.x-k8s.io/v1alpha1" {
		t.Errorf("apiVersion %s", u.GetAPIVersion())
	}
	if _, found, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "operatingMode"); found {
		t.Errorf("v1alpha1 object carries operatingMode")
	}
	if r, _, _ := unstructured.NestedInt64(u.Object, "spec", "replicas"); r != 0 {
		t.Errorf("suspended v1alpha1 replicas = %d, want 0", r)
	}
	back, err := fromUnstructured(u)
	if err != nil || !back.suspended {
		t.Errorf("read back: suspended %v, err %v", back != nil && back.suspended, err)
	}
	// A JSON-decoded object carries numbers as int64 or float64.
	_ = unstructured.SetNestedField(u.Object, float64(1), "spec", "replicas")
	if back, _ := fromUnstructured(u); back.suspended {
		t.Errorf("replicas 1 read as suspended")
	}
	if string(suspendPatch(versionAlpha, true)) != `{"spec":{"replicas":0}}` || string(suspendPatch(versionBeta, true)) != `{"spec":{"operatingMode":"Suspended"}}` {
		t.Errorf("suspend patches %s / %s", suspendPatch(versionAlpha, true), suspendPatch(versionBeta, true))
	}
}

func TestPlanRejects(t *testing.T) {
	cfg := testConfig()
	for _, tc := range []struct {
		what, want string
		edit       func(sb *computev1.DriverSandbox)
	}{
		{"gpu devices", "cannot name GPU devices", func(sb *computev1.DriverSandbox) {
			sb.Spec.Template.DriverConfig, _ = structpb.NewStruct(map[string]any{"gpu_devices": []any{"0000:01:00.0"}})
		}},
		{"reserved label", "reserved", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Labels["openshell.ai/x"] = "y" }},
		{"bad label value", "label \"team\" value", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Labels["team"] = "a b" }},
		{"memory below minimum", "below the minimum", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Resources.MemoryLimit = "1Mi" }},
		{"bad cpu", "cpu", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Resources.CpuLimit = "lots" }},
		{"request above limit", "above its limit", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Resources.CpuRequest = "2" }},
		{"bad runtime class", "runtime_class_name", func(sb *computev1.DriverSandbox) {
			sb.Spec.Template.PlatformConfig, _ = structpb.NewStruct(map[string]any{"runtime_class_name": "Not_Valid"})
		}},
		{"no token", "sandbox_token", func(sb *computev1.DriverSandbox) { sb.Spec.SandboxToken = "" }},
		{"no image", "no image", func(sb *computev1.DriverSandbox) { sb.Spec.Template.Image = "" }},
	} {
		sb := testSandbox()
		tc.edit(sb)
		c := cfg
		if tc.what == "no image" {
			c.DefaultImage = ""
		}
		_, err := c.plan(sb)
		if !errors.Is(err, drivers.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want ErrInvalidArgument mentioning %q", tc.what, err, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := testConfig()
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for _, tc := range []struct {
		want string
		edit func(c *Config)
	}{
		{"supervisor_image is empty", func(c *Config) { c.SupervisorImage = "" }},
		{"gateway_endpoint is empty", func(c *Config) { c.GatewayEndpoint = "" }},
		{"gateway_endpoint \"ftp://x\"", func(c *Config) { c.GatewayEndpoint = "ftp://x" }},
		{"namespace \"Bad_NS\"", func(c *Config) { c.Namespace = "Bad_NS" }},
		{"api_version \"v2\"", func(c *Config) { c.APIVersion = "v2" }},
		{"image_pull_policy", func(c *Config) { c.ImagePullPolicy = "Sometimes" }},
		{"gateway_host_ip", func(c *Config) { c.GatewayHostIP = "host" }},
		{"storage_size", func(c *Config) { c.StorageSize = "big" }},
		{"storage_class \"fast\" is set but storage_size is empty", func(c *Config) { c.StorageClass = "fast" }},
		{"tolerations[0].operator", func(c *Config) { c.Tolerations = []Toleration{{Key: "k", Operator: "Maybe"}} }},
		{"tolerations[0]: an empty key needs operator Exists", func(c *Config) { c.Tolerations = []Toleration{{Value: "v"}} }},
		{"node_selector key", func(c *Config) { c.NodeSelector = map[string]string{"a b": "c"} }},
		{"reserved for the driver", func(c *Config) { c.Labels = map[string]string{"openshell.ai/x": "y"} }},
		{"kubeconfig", func(c *Config) { c.Kubeconfig = "/nonexistent/kubeconfig" }},
		{"default_memory", func(c *Config) { c.DefaultMemory = "1Ki" }},
	} {
		c := good
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate = %v, want an error mentioning %q", err, tc.want)
		}
	}
	if ns := (Config{}).withDefaults(func(string) ([]byte, error) { return []byte("gw-ns\n"), nil }).Namespace; ns != "gw-ns" {
		t.Errorf("namespace from the service account file = %q, want gw-ns", ns)
	}
	if ns := (Config{}).withDefaults(func(string) ([]byte, error) { return nil, errors.New("no") }).Namespace; ns != "default" {
		t.Errorf("namespace without a service account = %q, want default", ns)
	}
}

// FuzzConfig decodes a [drivers.kubernetes] table as the gateway does and runs the
// checks and a plan on it: bad input is an error, never a panic.
func FuzzConfig(f *testing.F) {
	f.Add("supervisor_image = \"gw:1\"\ngateway_endpoint = \"https://gw:17670\"\nstorage_size = \"1Gi\"\n")
	f.Add("namespace = \"x\"\n[[tolerations]]\nkey = \"k\"\noperator = \"Exists\"\ntoleration_seconds = 5\n")
	f.Add("default_cpu = \"-1\"\ndefault_memory = \"1e400\"\nnode_selector = { \"a/b\" = \"c\" }\n")
	f.Fuzz(func(t *testing.T, table string) {
		var c Config
		if _, err := toml.Decode(table, &c); err != nil {
			return
		}
		c = c.withDefaults(nil)
		if c.Validate() != nil {
			return
		}
		if p, err := c.plan(testSandbox()); err == nil {
			_ = c.sandbox(p)
		}
	})
}
