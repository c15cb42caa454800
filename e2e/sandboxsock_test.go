package e2e

// The supervisor reaches the gateway through a socket of its own sandbox, mounted
// into that container only (docker and podman drivers): the gateway has no
// listener a container on a bridge can reach, a sandbox cannot use another's
// socket or token, the socket serves supervisor calls only, and a gateway killed
// with -9 re-creates the socket its sandboxes reconnect through.
//
//	go test -run SandboxSocket ./e2e/
//	E2E_DRIVER=podman go test -run SandboxSocket ./e2e/   (rootful; CONTAINER_HOST for rootless)

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers"
	"github.com/openshell/openshell/internal/relayframe"
)

// buildSockProbe compiles e2e/internal/sockprobe static for the host.
func buildSockProbe(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "sockprobe")
	cmd := exec.Command("go", "build", "-o", out, "./e2e/internal/sockprobe")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build sockprobe: %v\n%s", err, b)
	}
	return out
}

// probeIn copies the probe into a container and runs it there as the container's
// root (the supervisor's identity), returning its report.
func probeIn(t *testing.T, cid, probe string, args ...string) map[string]string {
	t.Helper()
	return probeAs(t, cid, probe, "0", args...)
}

// probeAs runs the probe in container cid as user (a name or uid).
func probeAs(t *testing.T, cid, probe, user string, args ...string) map[string]string {
	t.Helper()
	if out, err := engineCmd("cp", probe, cid+":/tmp/sockprobe").CombinedOutput(); err != nil {
		t.Fatalf("copy the probe into %s: %v %s", cid, err, out)
	}
	if out, err := engineCmd("exec", "-u", "0", cid, "chmod", "0755", "/tmp/sockprobe").CombinedOutput(); err != nil {
		t.Fatalf("make the probe runnable by every user in %s: %v %s", cid, err, out)
	}
	out, err := engineCmd(append([]string{"exec", "-u", user, cid, "/tmp/sockprobe"}, args...)...).CombinedOutput()
	return decodeProbe(t, out, err)
}

func decodeProbe(t *testing.T, out []byte, err error) map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var got map[string]string
	if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &got); jerr != nil {
		t.Fatalf("probe: %v (%v)\n%s", jerr, err, out)
	}
	return got
}

// mountSource is the host directory the engine mounts at dest in container cid.
func mountSource(t *testing.T, cid, dest string) string {
	t.Helper()
	out, err := engineCmd("inspect", "-f",
		`{{range .Mounts}}{{if eq .Destination "`+dest+`"}}{{.Source}}{{end}}{{end}}`, cid).Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("mount %s of %s: %v %q", dest, cid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// sandboxFacts are what the tests need of one sandbox: its container, id, token
// (from the driver's host state dir) and the host dir of its gateway socket.
type sandboxFacts struct {
	cid, id, token, sockDir string
}

func factsOf(t *testing.T, h *harness, box string) sandboxFacts {
	t.Helper()
	f := sandboxFacts{cid: containerID(t, box)}
	out, err := engineCmd("inspect", "-f", `{{index .Config.Labels "openshell.ai/sandbox-id"}}`, f.cid).Output()
	if err != nil {
		t.Fatal(err)
	}
	f.id = strings.TrimSpace(string(out))
	tok, err := os.ReadFile(filepath.Join(mountSource(t, f.cid, drivers.BootstrapDir), "token"))
	if err != nil {
		t.Fatal(err)
	}
	f.token = strings.TrimSpace(string(tok))
	f.sockDir = mountSource(t, f.cid, drivers.GatewaySocketMountDir)
	return f
}

// containerEnv is the value of an environment variable in a container's config.
func containerEnv(t *testing.T, cid, key string) string {
	t.Helper()
	out, err := engineCmd("inspect", "-f", `{{range .Config.Env}}{{println .}}{{end}}`, cid).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v
		}
	}
	return ""
}

func TestSandboxSocket(t *testing.T) {
	if driver() != "docker" && driver() != "podman" {
		t.Skip("per-sandbox sockets are the container drivers' transport")
	}
	h := newHarness(t)
	probe := buildSockProbe(t)
	a, b := uniqueName("sock-a"), uniqueName("sock-b")
	h.create(a, "sleep", "100000")
	h.create(b, "sleep", "100000")
	fa, fb := factsOf(t, h, a), factsOf(t, h, b)
	mine := drivers.GatewaySocketMountDir + "/" + drivers.GatewaySocketName

	t.Run("the supervisor dials its own socket", func(t *testing.T) {
		if ep := containerEnv(t, fa.cid, "OPENSHELL_ENDPOINT"); ep != "unix://"+mine {
			t.Fatalf("OPENSHELL_ENDPOINT = %q, want unix://%s", ep, mine)
		}
		if fa.sockDir == fb.sockDir {
			t.Fatalf("two sandboxes share the socket dir %s", fa.sockDir)
		}
		st, err := os.Stat(filepath.Join(fa.sockDir, drivers.GatewaySocketName))
		if err != nil || st.Mode()&os.ModeSocket == 0 {
			t.Fatalf("host socket: %v %v", st, err)
		}
		dst, _ := os.Stat(fa.sockDir)
		if st.Mode().Perm() != 0o600 || dst.Mode().Perm() != 0o700 {
			t.Fatalf("socket %v in dir %v, want 0600 in 0700", st.Mode().Perm(), dst.Mode().Perm())
		}
		t.Logf("socket %s: %v, owner uid %d (the container's root on the host)", filepath.Join(fa.sockDir, drivers.GatewaySocketName),
			st.Mode(), st.Sys().(*syscall.Stat_t).Uid)
	})

	t.Run("another sandbox's socket and token are refused", func(t *testing.T) {
		// Control: the probe works (own socket, own token, own id).
		if got := probeIn(t, fa.cid, probe, "-socket", mine, "-token", fa.token, "-sandbox", fa.id); got["code"] != "OK" {
			t.Fatalf("own socket and token: %v (the probe must succeed here, or the refusals below prove nothing)", got)
		}
		// The other sandbox's socket, by its host path: not in this container.
		other := filepath.Join(fb.sockDir, drivers.GatewaySocketName)
		if got := probeIn(t, fa.cid, probe, "-socket", other, "-token", fb.token, "-sandbox", fb.id); got["stat"] != "ENOENT" || got["code"] == "OK" {
			t.Errorf("sandbox A reached B's socket at its host path %s: %v", other, got)
		}
		// B's real token on A's socket, and a forged one naming B.
		if got := probeIn(t, fa.cid, probe, "-socket", mine, "-token", fb.token, "-sandbox", fb.id); got["code"] != "PermissionDenied" {
			t.Errorf("B's token on A's socket: %v, want PermissionDenied", got)
		}
		forged := forgeToken(fb.token, fb.id)
		if got := probeIn(t, fa.cid, probe, "-socket", mine, "-token", forged, "-sandbox", fb.id); got["code"] != "Unauthenticated" {
			t.Errorf("forged token naming B on A's socket: %v, want Unauthenticated", got)
		}
		// A's own token naming B in the request.
		if got := probeIn(t, fa.cid, probe, "-socket", mine, "-token", fa.token, "-sandbox", fb.id); got["code"] != "PermissionDenied" {
			t.Errorf("A's token asking for B's config: %v, want PermissionDenied", got)
		}
	})

	t.Run("the agent cannot open either socket", func(t *testing.T) {
		// The sockets are the supervisor's (the container's root): the agent, the
		// sandbox user, gets no connection to them, its own token or not.
		bulk := drivers.GatewaySocketMountDir + "/" + relayframe.BulkSocketName
		if st, err := os.Stat(filepath.Join(fa.sockDir, relayframe.BulkSocketName)); err != nil || st.Mode()&os.ModeSocket == 0 {
			t.Fatalf("host bulk socket: %v %v", st, err)
		}
		for _, sock := range []string{mine, bulk} {
			got := probeAs(t, fa.cid, probe, "sandbox", "-socket", sock, "-token", fa.token, "-sandbox", fa.id)
			if got["code"] == "OK" || got["stat"] != "EACCES" && !strings.Contains(got["msg"], "permission denied") {
				t.Errorf("the agent on %s: %v, want EACCES or permission denied", sock, got)
			}
		}
	})

	t.Run("only supervisor RPCs on the socket", func(t *testing.T) {
		if got := probeIn(t, fa.cid, probe, "-socket", mine, "-token", fa.token, "-call", "list"); got["code"] != "PermissionDenied" {
			t.Errorf("ListSandboxes with the sandbox's token: %v, want PermissionDenied", got)
		}
		// No token: the caller is root of the socket's owner, yet no administrator.
		if got := probeIn(t, fa.cid, probe, "-socket", mine, "-call", "list"); got["code"] != "PermissionDenied" && got["code"] != "Unauthenticated" {
			t.Errorf("ListSandboxes without a token: %v, want refused", got)
		}
	})

	t.Run("no gateway listener is reachable from a bridge", func(t *testing.T) {
		ports := listeningPorts(t, h.gatewayPID())
		if len(ports) == 0 {
			t.Fatal("found no TCP listener of the gateway process: the scan is broken")
		}
		// A listener of the test, on every address: the probe must reach it, else a
		// refusal of the gateway's ports proves nothing.
		ctl, err := net.Listen("tcp", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ctl.Close()
		go func() {
			for {
				c, err := ctl.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		ctlPort := ctl.Addr().(*net.TCPAddr).Port
		hosts := hostAddrs(t)
		var targets, controls []string
		for _, ip := range hosts {
			controls = append(controls, net.JoinHostPort(ip, strconv.Itoa(ctlPort)))
			for _, p := range ports {
				targets = append(targets, net.JoinHostPort(ip, strconv.Itoa(p)))
			}
		}
		t.Logf("gateway pid %d listens on ports %v; trying them on %v", h.gatewayPID(), ports, hosts)
		var got map[string]string
		if driver() == "docker" {
			// A plain container on the default bridge, not a sandbox.
			out, err := exec.Command("docker", "run", "--rm", "-v", probe+":/sockprobe:ro", "--entrypoint", "/sockprobe",
				testImage(), "-tcp", strings.Join(append(controls, targets...), ",")).CombinedOutput()
			got = decodeProbe(t, out, err)
		} else {
			// Podman's sandboxes have their own user-mode network; the host loopback
			// (10.0.2.2 there) must stay closed to them.
			for _, p := range ports {
				targets = append(targets, net.JoinHostPort("10.0.2.2", strconv.Itoa(p)))
			}
			got = probeIn(t, fa.cid, probe, "-tcp", strings.Join(append(controls, targets...), ","))
		}
		reached := 0
		for _, c := range controls {
			if got[c] == "connected" {
				reached++
			}
		}
		if reached == 0 {
			t.Fatalf("the probe reached none of the test's own listeners %v: %v", controls, got)
		}
		for _, a := range targets {
			if got[a] == "connected" {
				t.Errorf("a container reached the gateway at %s", a)
			}
		}
		t.Logf("%d gateway addresses tried, all refused; %d/%d control addresses reached", len(targets), reached, len(controls))
	})

	t.Run("gateway kill -9: the supervisor reconnects through the new socket", func(t *testing.T) {
		sock := filepath.Join(fa.sockDir, drivers.GatewaySocketName)
		killed := time.Now()
		t.Logf("READY %v after the restart", h.killGatewayAndWaitReady(t, a, 60*time.Second).Round(time.Millisecond))
		// The file's times say it was bound again (an inode number may be reused).
		if st, err := os.Stat(sock); err != nil || !st.ModTime().After(killed) {
			t.Fatalf("socket after the restart: %v %v (killed at %v): not re-created", st.ModTime(), err, killed)
		}
		// Exec needs the supervisor's session, whose only way in is the socket.
		for {
			r := h.run(t.Context(), "sandbox", "exec", "-n", a, "--", "echo", "back")
			if r.err == nil && strings.TrimSpace(r.stdout) == "back" {
				break
			}
			if time.Since(killed) > 60*time.Second {
				t.Fatalf("exec after the restart: %q %q %v", r.stdout, r.stderr, r.err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("exec works %v after the kill", time.Since(killed).Round(time.Millisecond))
		if got := probeIn(t, fa.cid, probe, "-socket", mine, "-token", fa.token, "-sandbox", fa.id); got["code"] != "OK" {
			t.Fatalf("own socket after the restart: %v", got)
		}
	})

	t.Run("stop and start after the restart mount the socket dir again", func(t *testing.T) {
		// The engine mounts the directory anew at the container's start; a rootless
		// engine's user must still reach it after the gateway's restart.
		h.mustRun(t, "sandbox", "stop", a)
		h.mustRun(t, "sandbox", "start", a, "--timeout", "120s")
		if r := h.mustRun(t, "sandbox", "exec", "-n", a, "--", "echo", "restarted"); strings.TrimSpace(r.stdout) != "restarted" {
			t.Fatalf("exec after stop and start: %q", r.stdout)
		}
	})

	t.Run("delete removes the socket dir", func(t *testing.T) {
		h.mustRun(t, "sandbox", "delete", b)
		if _, err := os.Stat(fb.sockDir); !os.IsNotExist(err) {
			t.Fatalf("socket dir of a deleted sandbox: %v", err)
		}
	})
}

// TestSandboxSocketExplicitEndpoint: a driver table naming gateway_endpoint (e.g.
// replicas behind a balancer) keeps sandboxes on TCP with TLS to it.
func TestSandboxSocketExplicitEndpoint(t *testing.T) {
	if driver() != "docker" {
		t.Skip("tested once, on the docker driver")
	}
	h := newHarness(t)
	h.mustRun(t, "gateway", "stop")
	cfg := filepath.Join(h.home, "gateway.toml")
	ep := fmt.Sprintf("https://%s:%d", drivers.GatewayHost, h.port)
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[drivers.docker]\ngateway_endpoint = %q\n", ep)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if r := h.run(ctx, "gateway", "start", "--drivers", "docker", "--port", strconv.Itoa(h.port), "--config", cfg); r.err != nil {
		t.Fatalf("gateway start: %v\n%s%s", r.err, r.stdout, r.stderr)
	}
	box := uniqueName("tcp")
	h.create(box, "sleep", "100000")
	cid := containerID(t, box)
	if got := containerEnv(t, cid, "OPENSHELL_ENDPOINT"); got != ep {
		t.Fatalf("OPENSHELL_ENDPOINT = %q, want the configured %q", got, ep)
	}
	out, _ := engineCmd("inspect", "-f", `{{range .Mounts}}{{.Destination}} {{end}}`, cid).Output()
	if strings.Contains(string(out), drivers.GatewaySocketMountDir) {
		t.Fatalf("a sandbox with a configured endpoint got the socket mount too: %s", out)
	}
	if r := h.mustRun(t, "sandbox", "exec", "-n", box, "--", "echo", "over-tls"); strings.TrimSpace(r.stdout) != "over-tls" {
		t.Fatalf("exec: %q", r.stdout)
	}
}

// forgeToken keeps a real token's header and signature but rewrites its claims
// to name another sandbox: a token the sandbox could make up itself.
func forgeToken(real, id string) string {
	parts := strings.Split(real, ".")
	if len(parts) != 3 {
		return real + "x"
	}
	claims := map[string]any{}
	if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
		_ = json.Unmarshal(b, &claims)
	}
	claims["sub"], claims["sandbox_id"] = id, id
	b, _ := json.Marshal(claims)
	return parts[0] + "." + base64.RawURLEncoding.EncodeToString(b) + "." + parts[2]
}

// listeningPorts reads the TCP ports pid listens on from the kernel: its socket
// fds matched against /proc/<pid>/net/tcp and tcp6 (state 0A = LISTEN).
func listeningPorts(t *testing.T, pid int) []int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	seen := map[int]bool{}
	var ports []int
	for _, f := range []string{"tcp", "tcp6"} {
		fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] {
				continue
			}
			_, portHex, _ := strings.Cut(fields[1], ":")
			p, err := strconv.ParseUint(portHex, 16, 16)
			if err == nil && !seen[int(p)] {
				seen[int(p)] = true
				ports = append(ports, int(p))
			}
		}
		fh.Close()
	}
	return ports
}

// hostAddrs are the host's non-loopback IPv4 addresses (bridge gateways
// included): where a container could find a host listener.
func hostAddrs(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			out = append(out, n.IP.String())
		}
	}
	return out
}
