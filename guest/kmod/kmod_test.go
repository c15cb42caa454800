package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestParseModinfo(t *testing.T) {
	sec := []byte("license=GPL\x00depends=virtio,virtio_ring,\x00name=virtio_blk\x00vermagic=6.1\x00")
	in := ParseModinfo(sec)
	if in.Name != "virtio_blk" || !slices.Equal(in.Depends, []string{"virtio", "virtio_ring"}) {
		t.Fatalf("got %+v", in)
	}
	if in := ParseModinfo([]byte("depends=\x00")); in.Depends != nil {
		t.Fatalf("empty depends gave %v", in.Depends)
	}
}

func TestOrder(t *testing.T) {
	mods := []Info{
		{Name: "vmw_vsock_virtio_transport", Depends: []string{"vmw_vsock_virtio_transport_common", "vsock", "virtio", "virtio_ring"}},
		{Name: "vsock"},
		{Name: "vmw_vsock_virtio_transport_common", Depends: []string{"vsock"}},
		{Name: "virtio_ring"},
		{Name: "virtio"},
		{Name: "overlay", Depends: []string{"builtin_thing"}},
	}
	got, err := Order(mods)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range got {
		pos[m.Name] = i
	}
	if len(got) != len(mods) {
		t.Fatalf("lost modules: %v", got)
	}
	for _, m := range mods {
		for _, d := range m.Depends {
			if p, ok := pos[d]; ok && p > pos[m.Name] {
				t.Fatalf("%s loads before its dependency %s: %v", m.Name, d, got)
			}
		}
	}
	_, err = Order([]Info{{Name: "a", Depends: []string{"b"}}, {Name: "b", Depends: []string{"a"}}})
	if !errors.Is(err, ErrCycle) {
		t.Fatalf("cycle not detected: %v", err)
	}
}

// TestReadInfoRealModules reads the guest kernel's modules when installed.
func TestReadInfoRealModules(t *testing.T) {
	ms, _ := filepath.Glob("/var/lib/openshell/vm/kernel/modules/*/kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko")
	if len(ms) == 0 {
		t.Skip("guest kernel modules not installed (run scripts/setup-vm-host.sh)")
	}
	f, err := os.Open(ms[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in, err := ReadInfo(f, filepath.Base(ms[0]))
	if err != nil {
		t.Fatal(err)
	}
	if in.Name != "vmw_vsock_virtio_transport" || !slices.Contains(in.Depends, "vsock") {
		t.Fatalf("got %+v", in)
	}
}

func FuzzParseModinfo(f *testing.F) {
	f.Add([]byte("name=a\x00depends=b,c\x00"))
	f.Add([]byte("depends=,,\x00name=x-y"))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := ParseModinfo(b)
		for _, d := range in.Depends {
			if d == "" {
				t.Fatal("empty dependency")
			}
		}
		if _, err := Order([]Info{in}); err != nil && !errors.Is(err, ErrCycle) {
			t.Fatal(err)
		}
	})
}
