package e2e

// The policy's process section (run_as_user / run_as_group) through the real
// binaries. Both drivers: the image is built in dockerd, which the VM driver imports
// from (`E2E_DRIVER=vm go test -run RunAs ./e2e/`).

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// runAsPolicy is the default policy's filesystem section with a process section.
const runAsPolicy = policyFilesystem + `process:
`

// The accounts of the run-as image: the base test image's root and sandbox (still its
// USER), plus agent (member of tools) and a spare group other.
const (
	runAsPasswd = "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/sandbox:/bin/sh\nagent:x:2345:2345:agent:/home/agent:/bin/sh\n"
	runAsGroup  = "root:x:0:\nsandbox:x:1000:\nagent:x:2345:\ntools:x:3456:agent\nother:x:4567:\n"
)

// buildRunAsImage builds, in dockerd, the bash test image with extra accounts and
// returns the reference to create sandboxes from; the image is removed at cleanup.
// Register it before the harness so it outlives the harness's sandboxes.
func buildRunAsImage(t *testing.T) string {
	t.Helper()
	ensureDockerImage(t)
	dir := t.TempDir()
	files := map[string]string{
		"Dockerfile": "FROM " + dockerTestImage + "\nCOPY passwd /etc/passwd\nCOPY group /etc/group\n",
		"passwd":     runAsPasswd,
		"group":      runAsGroup,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	tag := "openshell-test/runas:" + hex.EncodeToString(b)
	cmd := engineCmd("build", "-q", "-t", tag, dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0") // no buildx here: the classic builder
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker build %s: %v\n%s", tag, err, out)
	}
	t.Cleanup(func() {
		if out, err := engineCmd("image", "rm", "-f", tag).CombinedOutput(); err != nil {
			t.Logf("docker image rm %s: %v %s", tag, err, out)
		}
	})
	if driver() == "vm" {
		return "docker-daemon:" + tag
	}
	importToKubeNode(t, tag)
	return tag
}

// sandboxView is the part of `sandbox get -o json` the tests read.
type sandboxView struct {
	Status struct {
		Phase      string `json:"phase"`
		Conditions []struct {
			Type    string `json:"type"`
			Status  string `json:"status"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"conditions"`
	} `json:"status"`
}

func getSandbox(t *testing.T, h *harness, name string) (sandboxView, string) {
	t.Helper()
	r := h.mustRun(t, "sandbox", "get", name, "-o", "json")
	var v sandboxView
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("sandbox get %s -o json: %v\n%s", name, err, r.stdout)
	}
	return v, r.stdout
}

// TestRunAsPolicyAccount: a policy's process.run_as_user/run_as_group make the main
// process, exec sessions and SFTP run as that account (over the image's USER), with
// the account's supplementary groups; a later policy update that changes the account
// is refused while one that keeps it applies.
func TestRunAsPolicyAccount(t *testing.T) {
	image := buildRunAsImage(t)
	h := newHarness(t)
	dir := t.TempDir()
	pol := runAsPolicy + "  run_as_user: agent\n  run_as_group: other\n"
	polFile := writePolicy(t, dir, pol)
	box := uniqueName("runas")
	h.mustRun(t, "sandbox", "create", "--name", box, "--from", image, "--timeout", "120s", "--policy", polFile, "--",
		"sh", "-c", "echo $$ > /tmp/main.pid; while true; do sleep 1; done")
	sh := func(t *testing.T, script string) string {
		t.Helper()
		r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "sh", "-c", script)
		if r.code != 0 {
			t.Fatalf("exec %q: code %d stdout %q stderr %q", script, r.code, r.stdout, r.stderr)
		}
		return strings.TrimSpace(r.stdout)
	}

	t.Run("exec session", func(t *testing.T) {
		lines := strings.Split(sh(t, `id -u; id -g; id -G; echo "$USER"`), "\n")
		if len(lines) != 4 || lines[0] != "2345" || lines[1] != "4567" || lines[3] != "agent" {
			t.Fatalf("exec identity %q: want uid 2345 (agent) gid 4567 (other)", lines)
		}
		groups := strings.Fields(lines[2])
		slices.Sort(groups)
		if !slices.Equal(slices.Compact(groups), []string{"3456", "4567"}) {
			t.Fatalf("exec groups %q: want 4567 (primary, from run_as_group) and 3456 (tools, agent's membership)", lines[2])
		}
	})

	t.Run("main process", func(t *testing.T) {
		var status string
		deadline := time.Now().Add(20 * time.Second)
		for {
			r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "sh", "-c", `cat /proc/$(cat /tmp/main.pid)/status`)
			if r.code == 0 {
				status = r.stdout
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("main process status: %q %q", r.stdout, r.stderr)
			}
			time.Sleep(500 * time.Millisecond)
		}
		want := map[string]string{"Uid": "2345 2345 2345 2345", "Gid": "4567 4567 4567 4567", "Groups": "3456"}
		for _, line := range strings.Split(status, "\n") {
			k, v, _ := strings.Cut(line, ":")
			if w, ok := want[k]; ok {
				if got := strings.Join(strings.Fields(v), " "); got != w {
					t.Fatalf("main process %s: %q, want %q", k, got, w)
				}
				delete(want, k)
			}
		}
		if len(want) != 0 {
			t.Fatalf("main process status lacks %v:\n%s", want, status)
		}
	})

	t.Run("sftp upload", func(t *testing.T) {
		src := filepath.Join(dir, "up.txt")
		if err := os.WriteFile(src, []byte("uploaded\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		h.mustRun(t, "sandbox", "upload", box, src, "/tmp/up.txt")
		if got := sh(t, "stat -c %u:%g /tmp/up.txt"); got != "2345:4567" {
			t.Fatalf("uploaded file owned by %q, want 2345:4567", got)
		}
	})

	t.Run("policy update keeping the account applies", func(t *testing.T) {
		f := filepath.Join(dir, "same.yaml")
		p := pol + "network_policies:\n  example:\n    endpoints:\n      - host: api.example.com\n        port: 443\n"
		if err := os.WriteFile(f, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
		h.mustRun(t, "policy", "set", box, "--policy", f, "--wait", "--timeout", "60s")
		v, out := getSandbox(t, h, box)
		for _, c := range v.Status.Conditions {
			if c.Type == "PolicyApplied" && c.Status == "False" {
				t.Fatalf("the update was refused: %s", out)
			}
		}
	})

	t.Run("policy update changing the account is refused", func(t *testing.T) {
		f := filepath.Join(dir, "other.yaml")
		if err := os.WriteFile(f, []byte(runAsPolicy+"  run_as_user: sandbox\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := h.run(t.Context(), "policy", "set", box, "--policy", f, "--wait", "--timeout", "30s")
		t.Logf("policy set: %s", r.stderr)
		if r.code == 0 || !strings.Contains(r.stderr, "process") {
			t.Fatalf("policy set changing process: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		if got := sh(t, "id -u"); got != "2345" {
			t.Fatalf("after the refused update sessions run as uid %s", got)
		}
	})
}

// TestRunAsUnknownAccount: a policy naming an account the image lacks makes the
// sandbox fail to start (ERROR phase) with the field, the account and the fix in its
// status and logs.
func TestRunAsUnknownAccount(t *testing.T) {
	image := buildRunAsImage(t)
	h := newHarness(t)
	polFile := writePolicy(t, t.TempDir(), runAsPolicy+"  run_as_user: ghost\n")
	box := uniqueName("ghost")
	r := h.run(t.Context(), "sandbox", "create", "--name", box, "--from", image, "--timeout", "120s", "--policy", polFile, "--",
		"sh", "-c", "while true; do sleep 1; done")
	if r.code == 0 {
		t.Fatalf("sandbox create with an unknown run_as_user succeeded: %s", r.stdout)
	}
	t.Logf("sandbox create: %s", r.stderr)
	if !strings.Contains(r.stderr, "failed") {
		t.Fatalf("sandbox create did not report the failure: %q", r.stderr)
	}

	v, out := getSandbox(t, h, box)
	if !strings.Contains(strings.ToUpper(v.Status.Phase), "ERROR") {
		t.Fatalf("phase %q, want an error phase:\n%s", v.Status.Phase, out)
	}
	found := false
	for _, c := range v.Status.Conditions {
		if strings.Contains(c.Message, "process.run_as_user") && strings.Contains(c.Message, "ghost") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no condition names process.run_as_user and ghost:\n%s", out)
	}
	// The supervisor ships the start error to the gateway's sandbox logs too.
	waitLogs(t, h, box, `process.run_as_user "ghost"`)
	logs := h.mustRun(t, "sandbox", "logs", box, "--tail", "2000").stdout
	if !strings.Contains(logs, "sandbox start failed") || !strings.Contains(logs, "add the user to the sandbox image") {
		t.Fatalf("sandbox logs lack the start error and its fix:\n%s", logs)
	}
}
