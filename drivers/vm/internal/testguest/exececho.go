//go:build linux

package main

import (
	"io"
	"net"
	"os/exec"

	"github.com/openshell/openshell/guest/channel"
)

// ExecEchoPort is the guest vsock port of the exec benchmark's baseline: the host
// connects (through the VM's vsock backend), and for each byte it sends the guest runs
// /bin/true from the image, waits for it and answers with one byte ('0' when it
// exited 0). One round is a bare vsock round trip plus a process start, which is what
// `sandbox exec -- true` adds its gateway, relay and session work to.
const ExecEchoPort = 7070

// serveExecEcho listens on ExecEchoPort and serves each connection in the background.
func serveExecEcho() error {
	l, err := channel.Listen(ExecEchoPort)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go execEcho(c)
		}
	}()
	return nil
}

func execEcho(c net.Conn) {
	defer c.Close()
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		b[0] = '0'
		if err := exec.Command("/bin/true").Run(); err != nil {
			b[0] = '1'
		}
		if _, err := c.Write(b); err != nil {
			return
		}
	}
}
