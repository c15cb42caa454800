package images

import (
	"archive/tar"
	"fmt"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// bigImage is ~100 MiB of rootfs in 3 layers: many small files, some large
// ones, and an upper layer that whiteouts part of the lower ones.
func bigImage(b *testing.B) v1.Image {
	b.Helper()
	var small []ent
	for i := range 2000 { // 2000 × 8 KiB = ~16 MiB of small files
		small = append(small, ent{name: fmt.Sprintf("usr/share/d%02d/f%04d", i%50, i), body: randomBytes(8<<10, uint64(i))})
	}
	var large []ent
	for i := range 10 { // 10 × 8 MiB = 80 MiB
		large = append(large, ent{name: fmt.Sprintf("opt/big/blob%d", i), body: randomBytes(8<<20, uint64(10000+i))})
	}
	upper := []ent{
		{name: "usr/share/d00/.wh..wh..opq"},
		{name: "usr/share/d00/new", body: randomBytes(4<<20, 99)},
		{name: "opt/big/.wh.blob0"},
		{name: "opt/big/link", typ: tar.TypeLink, link: "opt/big/blob1"},
	}
	return imageOf(b, layerOf(b, small...), layerOf(b, large...), layerOf(b, upper...))
}

// BenchmarkConvert100MiB measures image → ext4 for a ~100 MiB rootfs from an
// OCI layout (unpack + mkfs.ext4 -d), without any network.
func BenchmarkConvert100MiB(b *testing.B) {
	requireTools(b)
	dir := filepath.Join(b.TempDir(), "layout")
	writeLayout(b, dir, bigImage(b), "")
	b.SetBytes(100 << 20)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		c := newTestCache(b)
		b.StartTimer()
		if _, err := c.Ensure(b.Context(), "oci-layout:"+dir, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnsureCached measures the second Ensure of a converted image: it
// must resolve the reference and find the entry, nothing more.
func BenchmarkEnsureCached(b *testing.B) {
	requireTools(b)
	dir := filepath.Join(b.TempDir(), "layout")
	writeLayout(b, dir, richImage(b), "v1")
	c := newTestCache(b)
	ref := "oci-layout:" + dir + ":v1"
	if _, err := c.Ensure(b.Context(), ref, nil); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := c.Ensure(b.Context(), ref, nil); err != nil {
			b.Fatal(err)
		}
	}
}
