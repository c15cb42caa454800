package driversel

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
)

// Auto-detection against the real engines scripts/setup-podman.sh and
// scripts/setup-docker.sh start: podman where only Podman answers (rootful and
// rootless sockets), docker where only Docker answers, podman first where both do.
func TestDetectRealEngines(t *testing.T) {
	rootful := "/run/podman/podman.sock"
	if s := os.Getenv("OPENSHELL_PODMAN_ROOTFUL_SOCK"); s != "" {
		rootful = s
	}
	rootless := os.Getenv("OPENSHELL_PODMAN_ROOTLESS_SOCK")
	if rootless == "" {
		if u, err := user.Lookup("openshell-podman"); err == nil {
			rootless = "/run/user/" + u.Uid + "/podman/podman.sock"
		}
	}
	dockerSock := "/var/run/docker.sock"
	testenv.Require(t, realPing(rootful) == "podman", "no rootful Podman service on "+rootful+"; run scripts/setup-podman.sh")
	testenv.Require(t, realPing(rootless) == "podman", "no rootless Podman service on "+rootless+"; run scripts/setup-podman.sh")
	testenv.Require(t, realPing(dockerSock) == "docker", "no Docker daemon on "+dockerSock+"; run scripts/setup-docker.sh")
	none := filepath.Join(t.TempDir(), "none.sock")

	for _, tc := range []struct {
		name                 string
		env                  map[string]string
		docker, podman       string
		wantDriver, wantSock string
	}{
		{"only rootful podman", nil, none, rootful, "podman", rootful},
		{"only rootless podman (XDG_RUNTIME_DIR)", map[string]string{"XDG_RUNTIME_DIR": filepath.Dir(filepath.Dir(rootless))}, none, none, "podman", rootless},
		{"only docker", nil, dockerSock, none, "docker", dockerSock},
		{"both: podman first", nil, dockerSock, rootful, "podman", rootful},
		{"podman socket named by DOCKER_HOST is podman", map[string]string{"DOCKER_HOST": "unix://" + rootful}, none, none, "podman", rootful},
		{"CONTAINER_HOST", map[string]string{"CONTAINER_HOST": "unix://" + rootless}, dockerSock, none, "podman", rootless},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Detector{
				Getenv:       func(k string) string { return tc.env[k] },
				UID:          987654,
				DockerSocket: tc.docker,
				PodmanSocket: tc.podman,
				Timeout:      2 * time.Second,
			}
			got, err := d.Detect(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got.Driver != tc.wantDriver || got.Socket != tc.wantSock {
				t.Fatalf("Detect() = %+v, want %s on %s", got, tc.wantDriver, tc.wantSock)
			}
		})
	}
}

func realPing(socket string) string {
	if socket == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return Detector{Timeout: 3 * time.Second}.ping(ctx, socket)
}

// The [drivers.podman] table reaches the driver: an unknown key is refused by name,
// and a table naming the real rootful socket builds a working driver.
func TestBuildPodmanFromTable(t *testing.T) {
	_, err := Build(context.Background(), "podman", DriverEnv{Table: map[string]any{"bogus": 1}})
	if err == nil || !strings.Contains(err.Error(), "bogus") || !strings.Contains(err.Error(), "[drivers.podman]") {
		t.Fatalf("unknown key: %v", err)
	}
	rootful := "/run/podman/podman.sock"
	testenv.Require(t, realPing(rootful) == "podman", "no rootful Podman service on "+rootful+"; run scripts/setup-podman.sh")
	sup, err := os.Executable() // any executable file stands in for the supervisor path
	if err != nil {
		t.Fatal(err)
	}
	env := DriverEnv{SupervisorBinary: sup, GatewayEndpoint: "https://host.openshell.internal:17670", GatewayPort: 17670,
		StateDir: t.TempDir(), Table: map[string]any{"socket": "unix://" + rootful, "allow_cgroups_v1": true}}
	d, err := Build(context.Background(), "podman", env)
	if err != nil {
		t.Fatalf("Build(podman): %v", err)
	}
	defer d.Close()
	caps, err := d.Capabilities(context.Background())
	if err != nil || caps.GetDriverName() != "podman" || !strings.Contains(caps.GetDriverVersion(), "rootful") {
		t.Fatalf("Capabilities = %v, %v", caps, err)
	}
}
