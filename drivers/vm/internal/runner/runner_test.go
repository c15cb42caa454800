package runner

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestControlProtocol runs the control API on a real Unix socket: status, a watch that
// follows changes to the final state, stop and kill requests.
func TestControlProtocol(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	box := newStatusBox(Status{State: StateBooting, RunnerPID: 42})
	var stops, kills atomic.Int32
	var gw atomic.Value
	srv := &http.Server{Handler: (&control{box: box, stop: func() { stops.Add(1) }, kill: func() { kills.Add(1) },
		setGateway: func(a string) error {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return err
			}
			gw.Store(a)
			return nil
		}}).handler()}
	go srv.Serve(l)
	defer srv.Close()

	c := NewClient(sock)
	st, err := c.Status(t.Context())
	if err != nil || st.State != StateBooting || st.RunnerPID != 42 {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	seen := make(chan string, 10)
	done := make(chan error, 1)
	go func() { done <- c.Watch(t.Context(), func(s Status) { seen <- s.State }) }()
	if got := <-seen; got != StateBooting {
		t.Fatalf("first watched state %q", got)
	}
	box.update(func(s *Status) { s.State = StateRunning; s.BootedAt = time.Now() })
	if got := <-seen; got != StateRunning {
		t.Fatalf("second watched state %q", got)
	}
	box.update(func(s *Status) { s.State, s.Reason = StateExited, "Stopped" })
	if got := <-seen; got != StateExited {
		t.Fatalf("third watched state %q", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("Watch after exit = %v, want nil", err)
	}
	if err := c.Stop(t.Context()); err != nil || stops.Load() != 1 {
		t.Fatalf("Stop: %v (stops=%d)", err, stops.Load())
	}
	if err := c.Kill(t.Context()); err != nil || kills.Load() != 1 {
		t.Fatalf("Kill: %v (kills=%d)", err, kills.Load())
	}

	if err := c.SetGateway(t.Context(), "127.0.0.1:4242"); err != nil || gw.Load() != "127.0.0.1:4242" {
		t.Fatalf("SetGateway: %v (%v)", err, gw.Load())
	}
	if err := c.SetGateway(t.Context(), "no-port"); err == nil {
		t.Fatal("SetGateway accepted an address without a port")
	}

	// A watch whose runner disappears mid-stream reports an error, not success.
	box2 := newStatusBox(Status{State: StateRunning})
	sock2 := filepath.Join(t.TempDir(), "ctl2.sock")
	l2, _ := net.Listen("unix", sock2)
	srv2 := &http.Server{Handler: (&control{box: box2, stop: func() {}, kill: func() {}}).handler()}
	go srv2.Serve(l2)
	errc := make(chan error, 1)
	go func() { errc <- NewClient(sock2).Watch(context.Background(), func(Status) {}) }()
	time.Sleep(200 * time.Millisecond)
	srv2.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Watch returned nil when the runner vanished")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not end when the runner vanished")
	}
	if _, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(t.Context()); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("Status on a missing socket: %v", err)
	}
}

func TestSpecRoundTripAndValidate(t *testing.T) {
	dir := t.TempDir()
	s := &Spec{SandboxID: "sb-1", Machine: MachineSpec{VCPUs: 1, MemoryMiB: 256, Kernel: "k", Initrd: "i", ImageDisk: "a", Disk: "b"}, GatewayAddr: "127.0.0.1:1", StopTimeout: Duration(7 * time.Second)}
	if err := WriteSpec(dir, s); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSpec(dir)
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(got.StopTimeout) != 7*time.Second || got.Machine.MemoryMiB != 256 {
		t.Fatalf("round trip: %+v", got)
	}
	bad := *s
	bad.Machine.VCPUs = 0
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "vcpus") {
		t.Fatalf("Validate(vcpus=0) = %v", err)
	}
	bad = *s
	bad.SandboxID = "../x"
	if bad.Validate() == nil {
		t.Fatal("Validate accepted a path in the id")
	}
}

func FuzzSpecDecode(f *testing.F) {
	f.Add([]byte(`{"sandbox_id":"a","machine":{"vcpus":1,"memory_mib":256,"kernel":"k","initrd":"i","image_disk":"a","disk":"b"},"gateway_addr":"x:1","stop_timeout":"5s"}`))
	f.Add([]byte(`{"stop_timeout":"forever"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s Spec
		if json.Unmarshal(b, &s) != nil {
			return
		}
		if s.Validate() == nil && (s.Machine.VCPUs < 1 || s.Machine.MemoryMiB < 64 || s.GatewayAddr == "") {
			t.Fatalf("Validate accepted %+v", s)
		}
	})
}
