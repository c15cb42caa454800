package vm_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/drivers/drivertest"
	"github.com/openshell/openshell/drivers/vm/internal/state"
	"github.com/openshell/openshell/vmm/channel"
)

// testguestXferPort is the test guest's XferPort.
const testguestXferPort = 7071

// xferGuest boots a VM of the driver (same kernel, backend and vsock channel as a
// sandbox's) whose test guest dials the host's XferPort (see testguest/xfer.go) as a
// supervisor dials the gateway port through the VM's vsock backend. It returns a
// function that takes the guest's next connection and sends it a request.
func xferGuest(t *testing.T) (dial func(op, flag byte, n uint64) net.Conn) {
	t.Helper()
	_, image := vmFixture(t)
	gw := newGatewayStub(t)
	dir := shortDir(t)
	d := newTestDriver(t, testConfig(t, dir, gw.addr()))
	t.Cleanup(func() { d.Close() })

	id, name := drivertest.NewIDs()
	sb := drivertest.DefaultSandbox(id, name, image)
	sb.Spec.Command = []string{"xfer"}
	sb.Spec.Template.Resources = &computev1.DriverResourceRequirements{CpuLimit: "2", MemoryLimit: "1Gi"}
	if err := d.Create(t.Context(), sb); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { d.Delete(context.Background(), id, "") })
	gw.next(t, id, vmTimeout) // the guest serves the port before it reports

	rec := record(t, dir, id)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("guest console:\n%s", state.Tail(rec.Paths.ConsoleLog, 3000))
			t.Logf("vsock backend log:\n%s", state.Tail(filepath.Join(rec.Paths.VMMDir, "vsock-backend.log"), 3000))
		}
	})
	uds := filepath.Join(rec.Paths.VMMDir, "vsock.sock")
	if _, err := os.Stat(uds); err != nil {
		t.Fatalf("the VM's vsock backend socket: %v (the xfer guest needs the vhost-user-vsock transport)", err)
	}
	// The guest dials the host's Unix socket for the port (as a supervisor dials the
	// gateway port through the backend), one connection per request.
	ln, err := net.Listen("unix", channel.UnixPortPath(uds, testguestXferPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return func(op, flag byte, n uint64) net.Conn {
		type res struct {
			c   net.Conn
			err error
		}
		got := make(chan res, 1)
		go func() {
			c, err := ln.Accept()
			got <- res{c, err}
		}()
		var c net.Conn
		select {
		case r := <-got:
			if r.err != nil {
				t.Fatalf("accept the guest's xfer connection: %v", r.err)
			}
			c = r.c
		case <-time.After(30 * time.Second):
			t.Fatal("the guest did not dial the xfer port within 30s")
		}
		req := make([]byte, 10)
		req[0], req[1] = op, flag
		binary.BigEndian.PutUint64(req[2:], n)
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// The gateway connection's larger vsock buffer takes effect in a real guest kernel:
// channel.SetVsockBuffer on a guest connection raises what the guest's socket
// reports from the kernel's 256 KiB default to 4 MiB.
func TestGuestVsockBuffer(t *testing.T) {
	dial := xferGuest(t)
	for _, c := range []struct {
		flag byte
		want uint64
	}{{0, 256 << 10}, {1, 4 << 20}} {
		conn := dial('b', c.flag, 0)
		var got [8]byte
		if _, err := io.ReadFull(conn, got[:]); err != nil {
			t.Fatalf("the guest's buffer size: %v", err)
		}
		conn.Close()
		if n := binary.BigEndian.Uint64(got[:]); n != c.want {
			t.Errorf("flag %d: the guest's vsock buffer is %d bytes, want %d", c.flag, n, c.want)
		}
	}
}

// TestBenchTransferChannel is the raw channel leg of the transfer benchmark
// (scripts/bench.sh transfer), with OPENSHELL_BENCH=1: on an xferGuest the host
// streams 256 MiB to the guest (discarded; then 32 MiB written to the guest's disk
// with one fsync) and reads 256 MiB from it, through the VM's vsock backend with no
// gRPC, runner or gateway on the way. It is the ceiling of `sandbox upload/download`
// on this host, which the e2e half (e2e TestTransferSpeed) measures through the CLI,
// the gateway, the runner and the guest's supervisor. Each case runs with the
// guest's default vsock buffer and with 4 MiB.
func TestBenchTransferChannel(t *testing.T) {
	if os.Getenv("OPENSHELL_BENCH") != "1" {
		t.Skip("benchmark: set OPENSHELL_BENCH=1")
	}
	dial := xferGuest(t)
	const size = 256 << 20
	send := func(op, flag byte, size int) float64 {
		c := dial(op, flag, uint64(size))
		defer c.Close()
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = byte(i)
		}
		start := time.Now()
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				t.Fatalf("send after %d bytes, %v: %v", sent, time.Since(start), err)
			}
		}
		var got [8]byte
		if _, err := io.ReadFull(c, got[:]); err != nil {
			t.Fatalf("the guest's count: %v", err)
		}
		el := time.Since(start)
		if n := binary.BigEndian.Uint64(got[:]); n != uint64(size) {
			t.Fatalf("the guest read %d bytes, want %d", n, size)
		}
		return float64(size) / (1 << 20) / el.Seconds()
	}
	recv := func(flag byte) float64 {
		c := dial('r', flag, size)
		defer c.Close()
		start := time.Now()
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, 1<<20))
		el := time.Since(start)
		if err != nil || n != size {
			t.Fatalf("read %d bytes from the guest (%v), want %d", n, err, size)
		}
		return size / (1 << 20) / el.Seconds()
	}
	for _, flag := range []byte{1, 0} {
		buf := "default vsock buffer"
		if flag == 1 {
			buf = "4 MiB vsock buffer"
		}
		fmt.Printf("BENCH vm-channel (%s) guest→host %.1f MiB/s\n", buf, recv(flag))
		fmt.Printf("BENCH vm-channel (%s) host→guest %.1f MiB/s\n", buf, send('w', flag, size))
		// The test guest's writable disk is 64 MiB.
		fmt.Printf("BENCH vm-channel (%s) host→guest 32 MiB into a file, fsync %.1f MiB/s\n", buf, send('f', flag, 32<<20))
	}
}
