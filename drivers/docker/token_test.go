package docker

import (
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/internal/testenv"
)

// TestAgentCannotReadToken: the token file handed to the supervisor is readable by
// the sandbox user when the gateway's uid is that user's (the file is 0600 on the
// host uid). The test makes it so (chown on the host to the sandbox user's uid) and
// shows that a plain container running as that uid reads it; in the sandbox, the
// sandbox user gets EACCES because the real supervisor covered the file before
// starting anything, while the supervisor itself had read it.
func TestAgentCannotReadToken(t *testing.T) {
	requireDocker(t)
	testenv.Require(t, realSup, "the real supervisor (./cmd/openshell-sandbox) does not build; the stand-in covers nothing")
	d := newTestDriver(t, testConfig(t))
	id, name := drivertest.NewIDs()
	createReady(t.Context(), t, d, drivertest.DefaultSandbox(id, name, testImage))
	cname := containerName(name)
	// The supervisor starts the main process after covering the token.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(dockerCLI(t, "logs", cname), "main process started") {
		if time.Now().After(deadline) {
			t.Fatalf("the main process never started:\n%s", dockerCLI(t, "logs", cname))
		}
		time.Sleep(200 * time.Millisecond)
	}
	uid := strings.TrimSpace(dockerCLI(t, "exec", cname, "id", "-u", "sandbox"))
	if uid == "" || uid == "0" {
		t.Fatalf("sandbox user uid %q", uid)
	}
	tokenPath := BootstrapDir + "/token"
	// The host file now belongs to the sandbox user's uid, as when the gateway runs
	// under that uid.
	if out, err := execCommand("chown", uid, d.stateDir(id)+"/token"); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	out, err := execCommand("docker", "run", "--rm", "--network", "none", "-u", uid, "-v", d.stateDir(id)+":/b:ro", testImage, "cat", "/b/token")
	if err != nil || strings.TrimSpace(out) != drivertest.SuiteToken {
		t.Fatalf("control: uid %s cannot read the uncovered token file (%v: %q), so this test proves nothing", uid, err, out)
	}
	// In the sandbox, as the sandbox user: open fails with EACCES.
	out, err = execCommand("docker", "exec", "-u", uid, cname, "cat", tokenPath)
	if err == nil || !strings.Contains(out, "Permission denied") || strings.Contains(out, drivertest.SuiteToken) {
		t.Fatalf("docker exec -u %s cat %s = %v: %q; want Permission denied", uid, tokenPath, err, out)
	}
	// Nor can it be reached through the bootstrap directory listing's other entries.
	if out, _ := execCommand("docker", "exec", "-u", uid, cname, "sh", "-c", "cat "+BootstrapDir+"/* 2>&1"); strings.Contains(out, drivertest.SuiteToken) {
		t.Fatalf("the token leaks through %s: %q", BootstrapDir, out)
	}
}
