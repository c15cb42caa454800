package backends

import (
	"errors"
	"strings"
	"testing"
)

func TestChoose(t *testing.T) {
	ok := func() error { return nil }
	no := func(why string) func() error { return func() error { return errors.New(why) } }
	for _, tc := range []struct {
		name, requested string
		p               Probes
		want, inReason  string
		wantErr         string
	}{
		{"mac", "auto", Probes{GOOS: "darwin", VZ: ok, Libkrun: no("x"), QEMU: ok}, VZ, "Virtualization.framework", ""},
		{"linux kvm + libkrun", "", Probes{GOOS: "linux", VZ: no("needs macOS"), Libkrun: ok, QEMU: ok}, Libkrun, "hardware KVM", ""},
		{"this host", "auto", Probes{GOOS: "linux", VZ: no("needs macOS"), Libkrun: no("libkrun.so.1 not found; no hardware KVM"), QEMU: ok}, QEMU, "libkrun.so.1 not found", ""},
		{"vz ignored off macOS", "auto", Probes{GOOS: "linux", VZ: ok, Libkrun: no("x"), QEMU: ok}, QEMU, "fallback", ""},
		{"requested qemu", "qemu", Probes{GOOS: "linux", VZ: ok, Libkrun: ok, QEMU: ok}, QEMU, "requested", ""},
		{"requested libkrun missing", "libkrun", Probes{GOOS: "linux", VZ: no(""), Libkrun: no("no hardware KVM"), QEMU: ok}, "", "", "backend libkrun was requested but cannot run here: no hardware KVM"},
		{"nothing", "auto", Probes{GOOS: "linux", VZ: no(""), Libkrun: no("no lib"), QEMU: no("qemu-system-x86_64 not found")}, "", "", "no VM backend can run here"},
		{"bad name", "hyperv", Probes{}, "", "", "use one of auto, qemu, libkrun, vz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := choose(tc.requested, tc.p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Name != tc.want || !strings.Contains(got.Reason, tc.inReason) {
				t.Fatalf("got %+v, %v; want %s with %q", got, err, tc.want, tc.inReason)
			}
		})
	}
}

// TestChooseHere: this host has no macOS and no libkrun, so auto is QEMU, and the
// reason names why libkrun was passed over.
func TestChooseHere(t *testing.T) {
	c, err := Choose(Auto)
	if err != nil {
		t.Skipf("no backend here: %v", err)
	}
	if c.Name == QEMU && !strings.Contains(c.Reason, "libkrun") {
		t.Fatalf("QEMU chosen without saying why not libkrun: %+v", c)
	}
	t.Logf("auto = %s (%s)", c.Name, c.Reason)
}
