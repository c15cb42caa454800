package driversel

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/rundir"
)

// engine serves /_ping on a Unix socket like a Docker (podman=false) or Podman engine.
func engine(t *testing.T, path string, podman bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_ping" {
			http.NotFound(w, r)
			return
		}
		if podman {
			w.Header().Set("Libpod-Api-Version", "5.4.2")
		}
		w.Header().Set("Api-Version", "1.41")
		w.Write([]byte("OK"))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func TestDetectOrder(t *testing.T) {
	// Short base dir: Unix socket paths are limited to 108 bytes.
	base, err := os.MkdirTemp("", "ds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	tests := []struct {
		name       string
		env        map[string]string
		setup      func(t *testing.T, dir string)
		wantDriver string
		wantSocket string // relative to dir
		wantErr    string
		notBuilt   []string // drivers this gateway lacks (default: every driver built)
	}{
		{name: "kubernetes wins", env: map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
			setup:      func(t *testing.T, dir string) { engine(t, filepath.Join(dir, "docker.sock"), false) },
			wantDriver: "kubernetes"},
		{name: "podman via OPENSHELL_PODMAN_SOCKET before docker", env: map[string]string{"OPENSHELL_PODMAN_SOCKET": "{dir}/p.sock"},
			setup: func(t *testing.T, dir string) {
				engine(t, filepath.Join(dir, "p.sock"), true)
				engine(t, filepath.Join(dir, "docker.sock"), false)
			}, wantDriver: "podman", wantSocket: "p.sock"},
		{name: "podman via XDG_RUNTIME_DIR", env: map[string]string{"XDG_RUNTIME_DIR": "{dir}/xdg"},
			setup: func(t *testing.T, dir string) {
				engine(t, filepath.Join(dir, "xdg", "podman", "podman.sock"), true)
				engine(t, filepath.Join(dir, "docker.sock"), false)
			}, wantDriver: "podman", wantSocket: "xdg/podman/podman.sock"},
		{name: "podman via CONTAINER_HOST", env: map[string]string{"CONTAINER_HOST": "unix://{dir}/ch.sock"},
			setup: func(t *testing.T, dir string) {
				engine(t, filepath.Join(dir, "ch.sock"), true)
				engine(t, filepath.Join(dir, "docker.sock"), false)
			}, wantDriver: "podman", wantSocket: "ch.sock"},
		{name: "rootful podman socket before docker",
			setup: func(t *testing.T, dir string) {
				engine(t, filepath.Join(dir, "rootful-podman.sock"), true)
				engine(t, filepath.Join(dir, "docker.sock"), false)
			}, wantDriver: "podman", wantSocket: "rootful-podman.sock"},
		{name: "docker-compatible socket without libpod header is not podman", env: map[string]string{"OPENSHELL_PODMAN_SOCKET": "{dir}/p.sock"},
			setup: func(t *testing.T, dir string) {
				engine(t, filepath.Join(dir, "p.sock"), false)
				engine(t, filepath.Join(dir, "docker.sock"), false)
			}, wantDriver: "docker", wantSocket: "docker.sock"},
		{name: "docker via DOCKER_HOST", env: map[string]string{"DOCKER_HOST": "unix://{dir}/dh.sock"},
			setup:      func(t *testing.T, dir string) { engine(t, filepath.Join(dir, "dh.sock"), false) },
			wantDriver: "docker", wantSocket: "dh.sock"},
		{name: "default docker socket", setup: func(t *testing.T, dir string) { engine(t, filepath.Join(dir, "docker.sock"), false) },
			wantDriver: "docker", wantSocket: "docker.sock"},
		{name: "stale socket file without a server", setup: func(t *testing.T, dir string) {
			l, _ := net.Listen("unix", filepath.Join(dir, "docker.sock"))
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			l.Close()
		}, wantErr: "--drivers"},
		{name: "nothing", wantErr: "--drivers"},
		// A driver that is not built is never chosen: the search goes on past it.
		{name: "kubernetes not built: docker", env: map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, notBuilt: []string{"kubernetes"},
			setup:      func(t *testing.T, dir string) { engine(t, filepath.Join(dir, "docker.sock"), false) },
			wantDriver: "docker", wantSocket: "docker.sock"},
		{name: "podman not built: docker", env: map[string]string{"OPENSHELL_PODMAN_SOCKET": "{dir}/p.sock"}, notBuilt: []string{"podman"},
			setup: func(t *testing.T, dir string) {
				engine(t, filepath.Join(dir, "p.sock"), true)
				engine(t, filepath.Join(dir, "docker.sock"), false)
			}, wantDriver: "docker", wantSocket: "docker.sock"},
		{name: "only an engine whose driver is not built", notBuilt: []string{"podman"},
			setup:   func(t *testing.T, dir string) { engine(t, filepath.Join(dir, "docker.sock"), true) },
			wantErr: "podman driver is not built into this gateway"},
		{name: "only kubernetes, not built", env: map[string]string{"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, notBuilt: []string{"kubernetes"},
			wantErr: "kubernetes driver is not built into this gateway"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(base, string(rune('a'+i)))
			os.MkdirAll(dir, 0o700)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			d := Detector{
				Getenv: func(k string) string {
					return strings.ReplaceAll(tc.env[k], "{dir}", dir)
				},
				UID:          987654, // no /run/user/<uid> on this host
				DockerSocket: filepath.Join(dir, "docker.sock"),
				PodmanSocket: filepath.Join(dir, "rootful-podman.sock"),
				Timeout:      time.Second,
				Built:        func(name string) bool { return !slices.Contains(tc.notBuilt, name) },
			}
			got, err := d.Detect(context.Background())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Detect() = %+v, %v; want error mentioning %q", got, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), "vm") {
					t.Errorf("error should list the valid drivers: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Driver != tc.wantDriver {
				t.Fatalf("driver = %q, want %q", got.Driver, tc.wantDriver)
			}
			if tc.wantSocket != "" && got.Socket != filepath.Join(dir, tc.wantSocket) {
				t.Errorf("socket = %q, want %q", got.Socket, filepath.Join(dir, tc.wantSocket))
			}
		})
	}
}

func TestParseDriverName(t *testing.T) {
	for _, n := range ValidNames {
		if got, err := ParseDriverName(n); err != nil || got != n {
			t.Errorf("ParseDriverName(%q) = %q, %v", n, got, err)
		}
	}
	for _, bad := range []string{"", "lxc", "docker,vm", "VM"} {
		_, err := ParseDriverName(bad)
		if err == nil || !strings.Contains(err.Error(), "docker, podman, kubernetes, vm") {
			t.Errorf("ParseDriverName(%q) = %v, want the list of valid values", bad, err)
		}
	}
}

// Only drivers that exist are registered: a name without a driver package is known
// (--drivers accepts it) but building it fails clearly, and the real detector never
// picks it.
func TestRegistry(t *testing.T) {
	names := Names()
	for _, n := range []string{"docker", "podman", "vm"} {
		if !slices.Contains(names, n) || !Built(n) {
			t.Errorf("factory %q not registered (have %v)", n, names)
		}
	}
	for _, n := range ValidNames {
		if slices.Contains(names, n) {
			continue
		}
		_, err := Build(context.Background(), n, DriverEnv{})
		if !errors.Is(err, ErrNotBuilt) || !strings.Contains(err.Error(), strings.Join(names, ", ")) {
			t.Errorf("Build(%q) of a driver that is not built = %v; want ErrNotBuilt naming %v", n, err, names)
		}
		d := Detector{Getenv: func(k string) string {
			if k == "KUBERNETES_SERVICE_HOST" && n == "kubernetes" {
				return "10.0.0.1"
			}
			return ""
		}, UID: 987654, DockerSocket: filepath.Join(t.TempDir(), "none.sock"), PodmanSocket: filepath.Join(t.TempDir(), "none.sock")}
		if got, err := d.Detect(context.Background()); err == nil && got.Driver == n {
			t.Errorf("the real detector picked %q, which is not built", n)
		}
	}
	_, err := Build(context.Background(), "nope", DriverEnv{})
	if err == nil || !strings.Contains(err.Error(), "exactly one of") {
		t.Errorf("unknown driver: %v", err)
	}
}

func TestVMArgs(t *testing.T) {
	env := DriverEnv{GatewayPort: 17670, CAFile: "/s/ca.crt", Table: map[string]any{
		"cpus": int64(2), "memory_mib": int64(1024), "accel": "tcg", "vsock_transport": "vhost-user", "binary": "/x",
		"disk_size": "4Gi", "egress_allow_cidr": []any{"10.1.0.0/16", "10.2.0.0/16"}, "resume_after_host_reboot": false}}
	args, err := VMArgs(env, "/s/vm-driver/driver.sock", "/s/vm-driver", 42)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	for _, want := range []string{"--bind-socket /s/vm-driver/driver.sock", "--expected-peer-pid 42", "--state-dir /s/vm-driver",
		"--gateway-endpoint 127.0.0.1:17670", "--gateway-ca-file /s/ca.crt", "--cpus=2", "--memory-mib=1024", "--accel=tcg", "--vsock-transport=vhost-user",
		"--disk-size=4Gi", "--egress-allow-cidr=10.1.0.0/16", "--egress-allow-cidr=10.2.0.0/16", "--resume-after-host-reboot=false"} {
		if !strings.Contains(got, want) {
			t.Errorf("args %q lack %q", got, want)
		}
	}
	env.Table["egress_allow_cidr"] = "10.0.0.0/8"
	if _, err := VMArgs(env, "s", "d", 1); err == nil || !strings.Contains(err.Error(), "list of CIDR") {
		t.Errorf("egress_allow_cidr not a list: %v", err)
	}
	delete(env.Table, "egress_allow_cidr")
	env.Table["bogus"] = 1
	if _, err := VMArgs(env, "s", "d", 1); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown key: %v", err)
	}
}

func TestVMDriverProcess(t *testing.T) {
	// A fake openshell-driver-vm that exits at once: newVM must fail fast with the
	// log tail, not hang for the full dial timeout.
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-driver")
	os.WriteFile(bin, []byte("#!/bin/sh\necho \"fake driver refusing: $*\" >&2\nexit 3\n"), 0o755)
	start := time.Now()
	_, err := Build(context.Background(), "vm", DriverEnv{StateDir: dir, GatewayPort: 1, Table: map[string]any{"binary": bin}})
	if err == nil || !strings.Contains(err.Error(), "fake driver refusing") {
		t.Fatalf("err = %v, want the driver's log tail", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %s to notice the driver died", time.Since(start))
	}
	st, err := os.Stat(filepath.Join(dir, "vm-driver"))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("vm-driver dir mode = %v, %v; want 0700", st.Mode().Perm(), err)
	}
	if run := rundir.For(filepath.Join(dir, "vm-driver")); fileExists(run) {
		t.Errorf("runtime dir %s left after the driver failed to start", run)
		os.RemoveAll(run)
	}
}

func fileExists(p string) bool { _, err := os.Lstat(p); return err == nil }
