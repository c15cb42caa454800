package docker

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
)

// forwarder lets sandboxes reach a gateway that listens on the host loopback only:
// it accepts on the bridge network's gateway IP and splices each connection to
// 127.0.0.1 on the same port. TLS passes through untouched (the gateway's
// certificate names host.openshell.internal).
type forwarder struct {
	log    *slog.Logger
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func startForwarder(log *slog.Logger, bindIP string, port int) (*forwarder, error) {
	addr := net.JoinHostPort(bindIP, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("docker driver: gateway forwarder: listen on %s (bridge gateway IP, gateway_port): %w; is another openshell gateway using the same network and port?", addr, err)
	}
	f := &forwarder{
		log:    log.With("forwarder", addr),
		ln:     ln,
		target: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		conns:  map[net.Conn]struct{}{},
	}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

// Addr is the address the forwarder listens on.
func (f *forwarder) Addr() net.Addr { return f.ln.Addr() }

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			f.log.Warn("gateway forwarder accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !f.track(c, true) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go f.splice(c)
	}
}

func (f *forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if add {
		if f.closed {
			return false
		}
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
	return true
}

func (f *forwarder) splice(in net.Conn) {
	defer f.wg.Done()
	defer f.track(in, false)
	defer in.Close()
	out, err := net.DialTimeout("tcp", f.target, 5*time.Second)
	if err != nil {
		f.log.Warn("gateway forwarder: gateway not reachable", "target", f.target, "err", err)
		return
	}
	if !f.track(out, true) {
		out.Close()
		return
	}
	defer f.track(out, false)
	defer out.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite() // pass the half-close on
		}
		done <- struct{}{}
	}
	go pipe(out, in)
	go pipe(in, out)
	<-done
	<-done
}

// Close stops accepting, cuts every open connection and waits for the goroutines.
func (f *forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	err := f.ln.Close()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
