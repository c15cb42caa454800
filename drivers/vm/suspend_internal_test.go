package vm

import (
	"strings"
	"testing"
)

// TestSuspendable: doctor says which backend/channel pairs can be suspended and, when
// not, what to change.
func TestSuspendable(t *testing.T) {
	for _, tc := range []struct {
		backend, transport string
		ok                 bool
		why                string
	}{
		{"qemu", "virtio-serial", true, "virtio-serial"},
		{"qemu", "vhost-vsock", true, "vhost-vsock"},
		{"qemu", "vhost-user-vsock", false, `vsock_transport = "virtio-serial"`},
		{"libkrun", "unix-ports", false, "libkrun backend cannot"},
		{"vz", "vz-virtio-socket", false, "vz backend cannot"},
	} {
		ok, why := suspendable(tc.backend, tc.transport)
		if ok != tc.ok || !strings.Contains(why, tc.why) {
			t.Errorf("suspendable(%s, %s) = %v %q; want %v naming %q", tc.backend, tc.transport, ok, why, tc.ok, tc.why)
		}
	}
}
