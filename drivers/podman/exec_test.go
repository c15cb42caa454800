package podman

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// execLingerLimit bounds how long an exec session's conmon may outlive its command on
// the services scripts/setup-podman.sh starts (their exit_command_delay plus the
// clean-up). Podman's default keeps it 300 s.
const execLingerLimit = 30 * time.Second

// conmons lists the conmon processes of container cid: its own (pid 0 if none) and
// those of its exec sessions.
func conmons(t *testing.T, cid string) (own int, execs []int) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue // gone, or a kernel thread
		}
		args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		if filepath.Base(args[0]) != "conmon" {
			continue
		}
		var ctr, session string
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-c", "--cid":
				ctr = args[i+1]
			case "-u", "--cuuid":
				session = args[i+1]
			}
		}
		switch {
		case ctr != cid:
		case session == cid:
			own = pid
		default:
			execs = append(execs, pid)
		}
	}
	return own, execs
}

// A few execs through the service (as the e2e probes make them) leave no conmon of
// theirs behind for long: Podman's default keeps each session's conmon five minutes.
func TestExecSessionsEndPromptly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reads every process's command line (the rootless service's too): run as root")
	}
	for _, md := range modes() {
		t.Run(md.name, func(t *testing.T) {
			requirePodman(t, md)
			cid := podmanCLI(t, md, "run", "-d", "--label", labelTestRun+"="+testRunID+"-exec", testImage, "sleep", "600")
			t.Cleanup(func() { podmanCLI(t, md, "rm", "-f", "-t", "0", cid) })
			const n = 3
			for i := range n {
				want := "exec " + strconv.Itoa(i)
				if got := podmanCLI(t, md, "exec", "-i", "-u", "0", cid, "sh", "-c", "echo exec $0", strconv.Itoa(i)); got != want {
					t.Fatalf("exec %d printed %q, want %q", i, got, want)
				}
			}
			ended := time.Now()
			own, execs := conmons(t, cid)
			if own == 0 {
				t.Fatalf("no conmon of container %s found: the count below would prove nothing", cid)
			}
			t.Logf("right after %d execs: the container's conmon (pid %d) and %d of its exec sessions", n, own, len(execs))
			for len(execs) > 0 {
				if time.Since(ended) > execLingerLimit {
					t.Fatalf("%d conmon processes of %d exec sessions (pids %v) still run %v after the last ended; want none after %v (is the service's exit_command_delay the default 300 s? rerun scripts/setup-podman.sh)",
						len(execs), n, execs, time.Since(ended).Round(time.Second), execLingerLimit)
				}
				time.Sleep(250 * time.Millisecond)
				own, execs = conmons(t, cid)
			}
			t.Logf("the exec sessions' conmons were gone %v after the last exec", time.Since(ended).Round(100*time.Millisecond))
			if own == 0 {
				t.Fatal("the container's own conmon went with its exec sessions'")
			}
		})
	}
}
