package kubernetes

import (
	"cmp"
	"fmt"
	"maps"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	sandboxv1beta1 "sigs.k8s.io/agent-sandbox/api/v1beta1"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/containers"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// Names inside a sandbox pod.
const (
	containerName     = "sandbox"
	initContainerName = "install-supervisor"
	supervisorVolume  = "openshell-supervisor"
	bootstrapVolume   = "openshell-bootstrap"
	// workVolume is the /sandbox volume; as a volumeClaimTemplate it becomes the
	// PVC "sandbox-<name>".
	workVolume = "sandbox"
	workDir    = "/sandbox"
	// Secret keys.
	tokenKey = "token"
	caKey    = "ca.pem"
	// GPUResource is the extended resource a GPU count asks for.
	GPUResource corev1.ResourceName = "nvidia.com/gpu"
	// installArg is the supervisor's self-copy subcommand (the supervisor image
	// has no shell or cp).
	installArg = "install"
)

// plan is a validated create request with everything resolved.
type plan struct {
	id, name, workspace string
	image               string
	labels              map[string]string
	resources           corev1.ResourceRequirements
	runtimeClass        string
	boot                bootstrap.Config
}

// secretName is the per-sandbox Secret holding the token and CA.
func secretName(name string) string { return name + "-openshell-bootstrap" }

// pvcName is the claim the agent-sandbox controller makes from workVolume.
func pvcName(name string) string { return workVolume + "-" + name }

// plan validates a create request; it reads nothing from the cluster.
func (c Config) plan(sb *computev1.DriverSandbox) (*plan, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("sandbox %s: %s: %w", sb.GetId(), fmt.Sprintf(format, args...), drivers.ErrInvalidArgument)
	}
	if err := drivers.ValidateSandbox(sb); err != nil {
		return nil, err
	}
	spec := sb.GetSpec()
	tmpl := spec.GetTemplate()
	p := &plan{id: sb.GetId(), name: sb.GetName(), workspace: sb.GetWorkspace()}
	// Every object is named after the sandbox; the Secret's suffix must still fit
	// a DNS subdomain, which a 63-character label always does.
	p.image = cmp.Or(tmpl.GetImage(), c.DefaultImage)
	if p.image == "" {
		return nil, invalid("no image: set the sandbox's image (or the driver's default_image)")
	}
	if strings.ContainsAny(p.image, " \t\n") {
		return nil, invalid("image %q contains whitespace", p.image)
	}

	res, err := c.resources(tmpl.GetResources())
	if err != nil {
		return nil, invalid("%v", err)
	}
	gpu, err := drivers.ReadGPURequest(spec, "node labels (use node_selector in [drivers.kubernetes] instead)", "device")
	if err != nil {
		return nil, invalid("%v", err)
	}
	if gpu != nil {
		if len(gpu.Devices) > 0 {
			return nil, invalid("driver_config %s: a Kubernetes sandbox cannot name GPU devices; ask for a count (--gpu N) and place it with node_selector", drivers.DriverConfigGPUDevices)
		}
		n := int64(max(gpu.Count, 1))
		q := *resource.NewQuantity(n, resource.DecimalSI)
		res.Limits[GPUResource] = q
		res.Requests[GPUResource] = q
	}
	p.resources = res

	p.runtimeClass = c.RuntimeClassName
	if rc := tmpl.GetPlatformConfig().GetFields()["runtime_class_name"].GetStringValue(); rc != "" {
		if msgs := validation.IsDNS1123Subdomain(rc); len(msgs) > 0 {
			return nil, invalid("runtime_class_name %q: %s", rc, strings.Join(msgs, "; "))
		}
		p.runtimeClass = rc
	}

	p.labels = map[string]string{}
	for k, v := range tmpl.GetLabels() {
		if strings.HasPrefix(k, "openshell.ai/") {
			return nil, invalid("label %q: the openshell.ai/ prefix is reserved", k)
		}
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			return nil, invalid("label key %q: %s", k, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			return nil, invalid("label %q value %q: %s", k, v, strings.Join(msgs, "; "))
		}
		p.labels[k] = v
	}
	maps.Copy(p.labels, c.Labels)
	p.labels[drivers.LabelManagedBy] = drivers.ManagedByValue
	p.labels[drivers.LabelSandboxID] = p.id
	p.labels[drivers.LabelSandboxName] = p.name
	if p.workspace != "" {
		if msgs := validation.IsValidLabelValue(p.workspace); len(msgs) > 0 {
			return nil, invalid("workspace %q: %s", p.workspace, strings.Join(msgs, "; "))
		}
		p.labels[drivers.LabelWorkspace] = p.workspace
	}
	// An image reference rarely fits a label value (slashes, colons): it goes in
	// an annotation instead.

	env := map[string]string{}
	maps.Copy(env, tmpl.GetEnvironment())
	maps.Copy(env, spec.GetEnvironment())
	p.boot = bootstrap.Config{
		Endpoint:    c.GatewayEndpoint,
		SandboxID:   p.id,
		SandboxName: p.name,
		TokenFile:   drivers.BootstrapDir + "/" + tokenKey,
		LogLevel:    cmp.Or(spec.GetLogLevel(), c.LogLevel),
		Main: bootstrap.MainProcessSpec{
			Version: 1,
			Command: spec.GetCommand(),
			TTY:     spec.GetTty(),
			Env:     env,
		},
	}
	if len(c.CAPEM) > 0 {
		p.boot.CAFile = drivers.BootstrapDir + "/" + caKey
	}
	if spec.GetSandboxToken() == "" {
		return nil, invalid("no sandbox token: the gateway must set sandbox_token")
	}
	return p, nil
}

// resources reads requests and limits: each defaults to the other, then to the
// driver's default; memory must reach min_memory.
func (c Config) resources(r *computev1.DriverResourceRequirements) (corev1.ResourceRequirements, error) {
	out := corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	cpuReq := cmp.Or(r.GetCpuRequest(), r.GetCpuLimit(), c.DefaultCPU)
	cpuLim := cmp.Or(r.GetCpuLimit(), r.GetCpuRequest(), c.DefaultCPU)
	memReq := cmp.Or(r.GetMemoryRequest(), r.GetMemoryLimit(), c.DefaultMemory)
	memLim := cmp.Or(r.GetMemoryLimit(), r.GetMemoryRequest(), c.DefaultMemory)
	type item struct {
		field, val string
		name       corev1.ResourceName
		list       corev1.ResourceList
	}
	for _, it := range []item{
		{"cpu request", cpuReq, corev1.ResourceCPU, out.Requests},
		{"cpu limit", cpuLim, corev1.ResourceCPU, out.Limits},
		{"memory request", memReq, corev1.ResourceMemory, out.Requests},
		{"memory limit", memLim, corev1.ResourceMemory, out.Limits},
	} {
		if it.val == "" {
			continue
		}
		// The shared parser first, so every driver takes and refuses the same values.
		var err error
		if it.name == corev1.ResourceCPU {
			var n int64
			if n, err = drivers.ParseCPU(it.val); err == nil && n < 10_000_000 {
				err = fmt.Errorf("%q is below the minimum of 10m", it.val)
			}
		} else {
			var n int64
			if n, err = drivers.ParseMemory(it.val); err == nil && n < c.MinMemory {
				err = fmt.Errorf("%q (%d bytes) is below the minimum of %d MiB", it.val, n, c.MinMemory>>20)
			}
		}
		if err != nil {
			return out, fmt.Errorf("%s: %v", it.field, err)
		}
		q, err := resource.ParseQuantity(it.val)
		if err != nil {
			return out, fmt.Errorf("%s %q: %v", it.field, it.val, err)
		}
		it.list[it.name] = q
	}
	for _, n := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okR := out.Requests[n]
		lim, okL := out.Limits[n]
		if okR && okL && req.Cmp(lim) > 0 {
			return out, fmt.Errorf("%s request %s is above its limit %s", n, req.String(), lim.String())
		}
	}
	return out, nil
}

// sandbox renders a plan as a Sandbox object (v1beta1 shape).
func (c Config) sandbox(p *plan) *sandboxv1beta1.Sandbox {
	no, yes := false, true
	root := int64(0)
	boot := p.boot
	envs := boot.Env()
	var env []corev1.EnvVar
	for _, kv := range envs {
		k, v, _ := strings.Cut(kv, "=")
		env = append(env, corev1.EnvVar{Name: k, Value: v})
	}
	podLabels := maps.Clone(p.labels)
	pull := corev1.PullPolicy(c.ImagePullPolicy)

	work := corev1.Volume{Name: workVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	volumes := []corev1.Volume{
		// The supervisor comes from the gateway's own image rather than being baked
		// into every sandbox image: any image can be a sandbox, and supervisor and
		// gateway always match. An init container copies it into this emptyDir,
		// which the sandbox container mounts read-only as its entrypoint.
		{Name: supervisorVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: bootstrapVolume, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  secretName(p.name),
			DefaultMode: ptr(int32(0o400)),
		}}},
	}
	var claims []sandboxv1beta1.PersistentVolumeClaimTemplate
	if c.StorageSize != "" {
		// The controller makes the claim and adds the volume of the same name.
		claim := sandboxv1beta1.PersistentVolumeClaimTemplate{
			EmbeddedObjectMetadata: sandboxv1beta1.EmbeddedObjectMetadata{Name: workVolume, Labels: maps.Clone(p.labels)},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceStorage: resource.MustParse(c.StorageSize),
				}},
			},
		}
		if c.StorageClass != "" {
			claim.Spec.StorageClassName = ptr(c.StorageClass)
		}
		claims = append(claims, claim)
	} else {
		volumes = append(volumes, work)
	}

	podSpec := corev1.PodSpec{
		// The agent gets no credentials for the cluster it runs in.
		AutomountServiceAccountToken: &no,
		EnableServiceLinks:           &no,
		RestartPolicy:                corev1.RestartPolicyNever,
		Hostname:                     p.name,
		NodeSelector:                 maps.Clone(c.NodeSelector),
		Tolerations:                  c.tolerations(),
		Volumes:                      volumes,
		InitContainers: []corev1.Container{{
			Name:            initContainerName,
			Image:           c.SupervisorImage,
			ImagePullPolicy: pull,
			Command:         []string{c.SupervisorImagePath, installArg, drivers.SupervisorPath},
			VolumeMounts:    []corev1.VolumeMount{{Name: supervisorVolume, MountPath: dirOf(drivers.SupervisorPath)}},
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot:             &yes,
				RunAsUser:                ptr(int64(65532)),
				AllowPrivilegeEscalation: &no,
				ReadOnlyRootFilesystem:   &yes,
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
			},
		}},
		Containers: []corev1.Container{{
			Name:            containerName,
			Image:           p.image,
			ImagePullPolicy: pull,
			Command:         []string{drivers.SupervisorPath},
			Env:             env,
			Resources:       p.resources,
			WorkingDir:      "",
			VolumeMounts: []corev1.VolumeMount{
				{Name: supervisorVolume, MountPath: dirOf(drivers.SupervisorPath), ReadOnly: true},
				{Name: bootstrapVolume, MountPath: drivers.BootstrapDir, ReadOnly: true},
				{Name: workVolume, MountPath: workDir},
			},
			// Root so the supervisor can set the sandbox up; it runs the agent as the
			// image's user with none of these capabilities.
			SecurityContext: &corev1.SecurityContext{
				RunAsUser:                &root,
				AllowPrivilegeEscalation: &no,
				Capabilities: &corev1.Capabilities{
					Drop: []corev1.Capability{"ALL"},
					Add:  capabilities(),
				},
			},
			TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		}},
	}
	if p.runtimeClass != "" {
		podSpec.RuntimeClassName = ptr(p.runtimeClass)
	}
	if c.GatewayHostIP != "" {
		podSpec.HostAliases = []corev1.HostAlias{{IP: c.GatewayHostIP, Hostnames: []string{drivers.GatewayHost}}}
	}
	no2 := false
	return &sandboxv1beta1.Sandbox{
		ObjectMeta: metav1.ObjectMeta{
			Name:        p.name,
			Namespace:   c.Namespace,
			Labels:      maps.Clone(p.labels),
			Annotations: map[string]string{drivers.LabelImage: p.image},
		},
		Spec: sandboxv1beta1.SandboxSpec{
			SandboxBlueprint: sandboxv1beta1.SandboxBlueprint{
				PodTemplate: sandboxv1beta1.PodTemplate{
					ObjectMeta: sandboxv1beta1.PodMetadata{Labels: podLabels},
					Spec:       podSpec,
				},
				VolumeClaimTemplates: claims,
				// A sandbox exposes no inbound port: no Service.
				Service: &no2,
			},
			OperatingMode: sandboxv1beta1.SandboxOperatingModeRunning,
		},
	}
}

// capabilities are the supervisor's capabilities, the same set every driver grants.
func capabilities() []corev1.Capability {
	var out []corev1.Capability
	for _, c := range containers.SupervisorCapabilities {
		out = append(out, corev1.Capability(c))
	}
	return out
}

func dirOf(p string) string { return p[:strings.LastIndex(p, "/")] }

func ptr[T any](v T) *T { return &v }
