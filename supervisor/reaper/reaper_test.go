package reaper

import (
	"bytes"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestStartRejectsNonFileStdio(t *testing.T) {
	r := New(false)
	defer r.Close()
	cmd := exec.Command("true")
	cmd.Stdout = &bytes.Buffer{}
	if _, err := r.Start(cmd); err == nil {
		t.Fatal("Start accepted a bytes.Buffer stdout, whose copier would never be joined")
	}
}

func TestWaitStatusAndExitCode(t *testing.T) {
	r := New(false)
	defer r.Close()
	p, err := r.Start(exec.Command("sh", "-c", "exit 42"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait(t.Context())
	if err != nil || ExitCode(st) != 42 {
		t.Fatalf("status %v err %v", st, err)
	}
	p, err = r.Start(exec.Command("sleep", "60"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("killed process not reaped")
	}
	if ExitCode(p.Status()) != 128+9 {
		t.Fatalf("exit code %d, want 137", ExitCode(p.Status()))
	}
	if err := p.Signal(syscall.SIGTERM); err == nil {
		t.Fatal("signal to a reaped process succeeded")
	}
}
