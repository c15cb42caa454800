package sshcmds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// ForwardSpec is a port forward: connections to Local on this machine's loopback reach
// Remote on the sandbox's loopback, through the gateway (the sandbox opens no port).
type ForwardSpec struct {
	Local, Remote uint16
}

func (f ForwardSpec) String() string {
	return fmt.Sprintf("%d:%d", f.Local, f.Remote)
}

// ParseForward reads PORT (the same port on both ends) or LOCAL:REMOTE.
func ParseForward(s string) (ForwardSpec, error) {
	port := func(v string) (uint16, error) {
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 16)
		if err != nil || n == 0 {
			return 0, fmt.Errorf("forward %q: %q is not a port (1-65535); write PORT or LOCAL:REMOTE, e.g. 8080 or 9000:8080", s, v)
		}
		return uint16(n), nil
	}
	l, r, two := strings.Cut(s, ":")
	local, err := port(l)
	if err != nil {
		return ForwardSpec{}, err
	}
	remote := local
	if two {
		if remote, err = port(r); err != nil {
			return ForwardSpec{}, err
		}
	}
	return ForwardSpec{Local: local, Remote: remote}, nil
}

// ServeForward accepts connections on ln and bridges each to 127.0.0.1:remote in
// sandbox name through the gateway's ForwardTcp, until ctx ends (nil) or ln fails.
// A connection the gateway refuses (sandbox not ready, nothing listening) is closed
// and reported to logf; the forward keeps serving.
func ServeForward(ctx context.Context, dial DialFunc, name string, ln net.Listener, remote uint16, logf func(format string, args ...any)) error {
	api, closeFn, err := connect(ctx, dial)
	if err != nil {
		return err
	}
	defer closeFn()
	id, err := resolve(ctx, api, name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("forward to sandbox %s: accept: %w", name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			sc, err := openForward(ctx, api, &pb.TcpForwardInit{SandboxId: id,
				Target: &pb.TcpForwardInit_Tcp{Tcp: &pb.TcpRelayTarget{Host: "127.0.0.1", Port: uint32(remote)}}})
			if err != nil {
				logf("connection from %s: %v", c.RemoteAddr(), err)
				return
			}
			defer sc.Close()
			splice(c, sc)
		}()
	}
}

type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// splice copies both ways until both directions end, passing each end-of-stream on
// as a half close so request/response protocols finish cleanly.
func splice(a net.Conn, b halfCloser) {
	done := make(chan struct{}, 2)
	cp := func(dst io.Writer, src io.Reader, closeWrite func() error) {
		_, err := io.Copy(dst, src)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			_ = a.Close()
			_ = b.Close()
		}
		_ = closeWrite()
		done <- struct{}{}
	}
	aw := func() error {
		if hc, ok := a.(interface{ CloseWrite() error }); ok {
			return hc.CloseWrite()
		}
		return a.Close()
	}
	go cp(b, a, b.CloseWrite)
	go cp(a, b, aw)
	<-done
	<-done
}
