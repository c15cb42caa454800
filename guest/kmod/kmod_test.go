package kmod

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/openshell/openshell/internal/testenv"
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

// guestModule is the path of a module of the installed guest kernel (rel under its
// kernel/ tree).
func guestModule(t *testing.T, rel string) string {
	t.Helper()
	ms, _ := filepath.Glob("/var/lib/openshell/vm/kernel/modules/*/kernel/" + rel)
	testenv.Require(t, len(ms) > 0, "guest kernel modules not installed (run scripts/setup-vm-host.sh)")
	return ms[0]
}

// TestReadInfoRealModules reads the guest kernel's modules when installed.
func TestReadInfoRealModules(t *testing.T) {
	path := guestModule(t, "net/vmw_vsock/vmw_vsock_virtio_transport.ko")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in, err := ReadInfo(f, filepath.Base(path))
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

// signed appends a signature of sigLen bytes to body the way the kernel's sign-file
// does: the signature, a 12-byte descriptor ending in its length, the magic.
func signed(body []byte, sigLen int) []byte {
	out := append([]byte{}, body...)
	out = append(out, bytes.Repeat([]byte{0xA5}, sigLen)...)
	desc := make([]byte, 12)
	desc[2] = 2 // id type PKCS#7, as sign-file writes
	binary.BigEndian.PutUint32(desc[8:], uint32(sigLen))
	out = append(out, desc...)
	return append(out, sigMagic...)
}

func TestStripSignature(t *testing.T) {
	body := []byte("\x7fELF module body")
	cases := []struct {
		name string
		in   []byte
		want []byte
	}{
		{"signed", signed(body, 40), body},
		{"unsigned", body, body},
		{"magic only", []byte(sigMagic), []byte(sigMagic)},
		// A length that does not fit leaves the data as it is: the kernel then
		// judges the module, not a guess here.
		{"length past the start", signed(body, 40)[len(body)+20:], signed(body, 40)[len(body)+20:]},
		{"zero length", signed(body, 0), signed(body, 0)},
	}
	for _, c := range cases {
		if got := StripSignature(c.in); !bytes.Equal(got, c.want) {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

// TestStripSignatureRealModule: a module of the guest kernel loses exactly its
// signature: the rest is the same ELF file, its sections intact.
func TestStripSignatureRealModule(t *testing.T) {
	path := guestModule(t, "drivers/block/virtio_blk.ko")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(data, []byte(sigMagic)) {
		t.Fatalf("%s carries no signature; the kernel package's modules are signed", path)
	}
	got := StripSignature(data)
	if len(got) >= len(data)-len(sigMagic) || bytes.Contains(got[len(got)-min(len(got), 64):], []byte("~Module")) {
		t.Fatalf("stripped %d of %d bytes", len(data)-len(got), len(data))
	}
	f, err := elf.NewFile(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("the stripped module is no ELF file: %v", err)
	}
	var end uint64
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS {
			end = max(end, s.Offset+s.Size)
		}
	}
	// The section header table (e_shoff, e_shentsize, e_shnum of the ELF64 header)
	// usually ends the file.
	shEnd := binary.LittleEndian.Uint64(got[0x28:]) + uint64(binary.LittleEndian.Uint16(got[0x3a:]))*uint64(binary.LittleEndian.Uint16(got[0x3c:]))
	if uint64(len(got)) < max(end, shEnd) {
		t.Fatalf("stripping cut into the module: %d bytes left, sections reach %d", len(got), max(end, shEnd))
	}
	if in, err := ReadInfo(bytes.NewReader(got), "virtio_blk.ko"); err != nil || in.Name != "virtio_blk" {
		t.Fatalf("modinfo of the stripped module: %+v, %v", in, err)
	}
}

func FuzzStripSignature(f *testing.F) {
	f.Add(signed([]byte("body"), 8))
	f.Add([]byte(sigMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := StripSignature(b)
		if !bytes.HasPrefix(b, got) {
			t.Fatal("the result is not a prefix of the input")
		}
		if len(got) < len(b) && len(b)-len(got) < 12+len(sigMagic)+1 {
			t.Fatalf("stripped %d bytes: less than a descriptor, the magic and a signature", len(b)-len(got))
		}
	})
}
