package podman

import (
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/gateway/pki"
)

// The container the driver makes, as the podman CLI sees it: image pinned by id,
// supervisor entrypoint as root, labels, capabilities, no-new-privileges, limits,
// read-only mounts, its own slirp4netns network; the token is unreadable for the
// sandbox user once the supervisor runs the agent.
func TestCreateContainerShape(t *testing.T) {
	for _, md := range modes() {
		t.Run(md.name, func(t *testing.T) {
			requirePodman(t, md)
			cfg := testConfig(t, md)
			ca, err := pki.Ensure(t.TempDir(), nil) // the gateway's own CA, as handed to supervisors
			if err != nil {
				t.Fatal(err)
			}
			cfg.CAPEM = ca.CAPEM
			d := newTestDriver(t, cfg)
			ctx := t.Context()
			id, name := drivertest.NewIDs()
			sb := drivertest.DefaultSandbox(id, name, testImage)
			sb.Workspace = "ws1"
			sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "500m", MemoryLimit: "128Mi"}
			got := createReady(ctx, t, d, sb)
			if got.GetWorkspace() != "ws1" || got.GetStatus().GetInstanceId() == "" {
				t.Errorf("observation workspace/instance = %q/%q", got.GetWorkspace(), got.GetStatus().GetInstanceId())
			}
			cname := containerName(name)
			f := func(tmpl string) string { return podmanCLI(t, md, "inspect", "-f", tmpl, cname) }
			imgID := podmanCLI(t, md, "image", "inspect", "-f", "{{.Id}}", testImage)
			checks := []struct{ what, got, want string }{
				{"image pinned to id", f("{{.Image}}"), imgID},
				{"entrypoint", f("{{range .Config.Entrypoint}}{{.}} {{end}}"), drivers.SupervisorPath + " "},
				{"user", f("{{.Config.User}}"), "0:0"},
				{"label managed-by", f(`{{index .Config.Labels "openshell.ai/managed-by"}}`), drivers.ManagedByValue},
				{"label sandbox-id", f(`{{index .Config.Labels "openshell.ai/sandbox-id"}}`), id},
				{"label workspace", f(`{{index .Config.Labels "openshell.ai/workspace"}}`), "ws1"},
				{"user label", f(`{{index .Config.Labels "openshell.test/suite"}}`), "drivertest"},
				{"restart policy", f("{{.HostConfig.RestartPolicy.Name}}"), "no"},
				{"network", f("{{.HostConfig.NetworkMode}}"), "slirp4netns"},
				{"extra hosts", f("{{range .HostConfig.ExtraHosts}}{{.}} {{end}}"), drivers.GatewayHost + ":" + hostLoopback + " "},
				{"runtime", f("{{.OCIRuntime}}"), "runc"},
			}
			if !(d.rootless && d.cgroupsV1) {
				checks = append(checks,
					struct{ what, got, want string }{"cpu quota", f("{{.HostConfig.CpuQuota}}"), "50000"},
					struct{ what, got, want string }{"memory", f("{{.HostConfig.Memory}}"), "134217728"},
					struct{ what, got, want string }{"pids limit", f("{{.HostConfig.PidsLimit}}"), "4096"},
				)
			}
			for _, c := range checks {
				if c.got != strings.TrimSpace(c.want) {
					t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
				}
			}
			caps := f("{{range .EffectiveCaps}}{{.}} {{end}}")
			for _, c := range supervisorCaps {
				if !strings.Contains(caps, "CAP_"+c) {
					t.Errorf("effective caps %q lack %s", caps, c)
				}
			}
			for _, c := range []string{"CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"} {
				if strings.Contains(caps, c) {
					t.Errorf("effective caps %q keep %s", caps, c)
				}
			}
			if so := f("{{range .HostConfig.SecurityOpt}}{{.}} {{end}}"); !strings.Contains(so, "no-new-privileges") {
				t.Errorf("security opts %q lack no-new-privileges", so)
			}
			mounts := f(`{{range .Mounts}}{{.Destination}}:{{.RW}} {{end}}`)
			for _, m := range []string{drivers.SupervisorPath + ":false", drivers.BootstrapDir + ":false"} {
				if !strings.Contains(mounts, m) {
					t.Errorf("mounts %q lack read-only %s", mounts, m)
				}
			}
			// The supervisor runs the agent after covering the token: the sandbox
			// user (uid 1000 in the test image) cannot read it.
			deadline := time.Now().Add(60 * time.Second)
			for !strings.Contains(podmanCLI(t, md, "logs", cname), "main process started") {
				if time.Now().After(deadline) {
					t.Fatalf("the main process never started:\n%s", podmanCLI(t, md, "logs", cname))
				}
				time.Sleep(200 * time.Millisecond)
			}
			out, err := execCommand(podmanBin(), "--remote", "--url", "unix://"+md.socket, "exec", "-u", "1000", cname, "cat", drivers.BootstrapDir+"/token")
			if err == nil || strings.Contains(out, drivertest.SuiteToken) {
				t.Errorf("the sandbox user read the token: %v %q", err, out)
			}
			if out, _ := execCommand(podmanBin(), "--remote", "--url", "unix://"+md.socket, "exec", cname, "cat", drivers.BootstrapDir+"/ca.pem"); out != strings.TrimSpace(string(cfg.CAPEM)) {
				t.Errorf("CA bundle in the sandbox = %q", out)
			}
		})
	}
}
