package sshd

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
)

// TestExitStatusAfterTheExecReply: a program that is over before the server has
// answered its exec request still reaches the client as an exit status. The status
// and the channel's close used to race the reply; when they won, the client's exec
// failed with EOF (one run in ~50 here). Config.Start waits for the program's exit,
// so every program is over by the time the server replies: the widest window there
// is without a hook in the server. 200 runs, sequential.
func TestExitStatusAfterTheExecReply(t *testing.T) {
	r := reaper.New(false)
	t.Cleanup(func() { r.Close() })
	dir := t.TempDir()
	u := &sandboxuser.User{Name: "me", UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Home: dir, Shell: "/bin/sh"}
	srv, err := New(Config{User: u, Env: append([]string{"PATH=/usr/bin:/bin"}, u.Env()...), Dir: dir, Reaper: r,
		Start: func(cmd *exec.Cmd) (*reaper.Proc, error) {
			p, err := r.Start(cmd)
			if err == nil {
				<-p.Done()
			}
			return p, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "ssh.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cs, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.ServeConn(ctx, ss); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sc, chans, reqs, err := ssh.NewClientConn(cs, "sandbox", &ssh.ClientConfig{User: "sandbox", HostKeyCallback: ssh.FixedHostKey(srv.HostKey())})
	if err != nil {
		t.Fatal(err)
	}
	cl := ssh.NewClient(sc, chans, reqs)
	defer cl.Close()
	bad := 0
	var last error
	for i := 0; i < 200; i++ {
		sess, err := cl.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		err = sess.Run("exit 3")
		var ee *ssh.ExitError
		if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
			bad, last = bad+1, err
		}
	}
	if bad > 0 {
		t.Fatalf("%d of 200 runs of \"exit 3\" did not end with exit status 3 (last: %v)", bad, last)
	}
}
