package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
)

const dockerTestImage = "openshell-test/bash"

func dockerReady() (bool, string) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", "/var/run/docker.sock")
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	resp, err := c.Get("http://docker/images/" + dockerTestImage + "/json")
	if err != nil {
		return false, "no Docker engine on /var/run/docker.sock; run scripts/setup-docker.sh"
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, "test image " + dockerTestImage + " missing; run scripts/testimage/build.sh"
	}
	return true, ""
}

// TestDockerEndToEnd is the whole product on the Docker driver: real gateway, real
// dockerd, the real static supervisor inside the container. It creates a sandbox,
// waits for READY, runs a command, stops and starts it, restarts the gateway (the
// sandbox comes back READY once its supervisor reconnects) and deletes it.
func TestDockerEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Docker and builds three binaries")
	}
	ok, why := dockerReady()
	testenv.Require(t, ok, why)
	tmp := cliEnv(t, "openshell-gateway", "openshell-sandbox", "openshell")
	cli := func(timeout time.Duration, args ...string) (string, error) {
		// Not t.Context(): cleanup (gateway stop) runs after it is cancelled.
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(tmp, "openshell"), append([]string{"--gateway", "dockere2e"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	port := strconv.Itoa(freePort(t))
	name := "e2e-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)

	if out, err := cli(90*time.Second, "gateway", "start", "--drivers", "docker", "--port", port); err != nil {
		t.Fatalf("gateway start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		cli(60*time.Second, "sandbox", "delete", name)
		if out, err := cli(30*time.Second, "gateway", "stop"); err != nil {
			t.Errorf("gateway stop: %v\n%s", err, out)
		}
	})
	out, err := cli(30*time.Second, "gateway", "status", "-o", "json")
	if err != nil || !strings.Contains(out, `"driver": "docker"`) {
		t.Fatalf("status: %v\n%s", err, out)
	}
	// A flag only the vm driver reads is refused here, not dropped without a word.
	if out, err := cli(30*time.Second, "sandbox", "create", "--name", name, "--from", dockerTestImage, "--disk-size", "20Gi", "--", "true"); err == nil ||
		!strings.Contains(out, `--disk-size: the gateway's driver is "docker"`) {
		t.Fatalf("create --disk-size on the docker driver: %v\n%s", err, out)
	}
	if out, err := cli(120*time.Second, "sandbox", "create", "--name", name, "--from", dockerTestImage, "--timeout", "90s", "--", "sleep", "100000"); err != nil {
		t.Fatalf("create: %v\n%s", err, out)
	} else if !strings.Contains(out, "READY") {
		t.Fatalf("create did not report READY:\n%s", out)
	}
	out, err = cli(60*time.Second, "sandbox", "exec", "-n", name, "--", "sh", "-c", "echo hello-from-sandbox; exit 7")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 || !strings.Contains(out, "hello-from-sandbox") {
		t.Fatalf("exec: %v\n%s", err, out)
	}
	if out, err := cli(60*time.Second, "sandbox", "stop", name); err != nil || !strings.Contains(out, "STOPPED") {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	if out, err := cli(120*time.Second, "sandbox", "start", name, "--timeout", "90s"); err != nil || !strings.Contains(out, "READY") {
		t.Fatalf("start: %v\n%s", err, out)
	}

	// Gateway restart: the record survives, the supervisor reconnects.
	if out, err := cli(30*time.Second, "gateway", "stop"); err != nil {
		t.Fatalf("gateway stop: %v\n%s", err, out)
	}
	if out, err := cli(90*time.Second, "gateway", "start", "--drivers", "docker", "--port", port); err != nil {
		t.Fatalf("gateway restart: %v\n%s", err, out)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err = cli(30*time.Second, "sandbox", "get", name)
		if err == nil && strings.Contains(out, "READY") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox not READY after gateway restart: %v\n%s\ngateway log:%s", err, out, tail(filepath.Join(tmp, "state", "openshell", "gateway-dockere2e", "gateway.log")))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if out, err := cli(60*time.Second, "sandbox", "exec", "-n", name, "--", "echo", "again"); err != nil || !strings.Contains(out, "again") {
		t.Fatalf("exec after restart: %v\n%s", err, out)
	}
	if out, err := cli(60*time.Second, "sandbox", "delete", name); err != nil {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(tmp, "state")); err != nil {
		t.Errorf("state dir: %v", err)
	}
}
