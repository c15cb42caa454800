package images

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

func TestParseReference(t *testing.T) {
	layoutDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(layoutDir, "index.json"), []byte(`{}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := []struct {
		in   string
		want Reference
	}{
		{"alpine", Reference{Transport: TransportRegistry, Name: "index.docker.io/library/alpine", Tag: "latest"}},
		{"alpine:3.20", Reference{Transport: TransportRegistry, Name: "index.docker.io/library/alpine", Tag: "3.20"}},
		{"user/img", Reference{Transport: TransportRegistry, Name: "index.docker.io/user/img", Tag: "latest"}},
		{"ghcr.io/org/img:v1", Reference{Transport: TransportRegistry, Name: "ghcr.io/org/img", Tag: "v1"}},
		{"localhost:5000/img", Reference{Transport: TransportRegistry, Name: "localhost:5000/img", Tag: "latest"}},
		{"localhost:5000/a/b:t", Reference{Transport: TransportRegistry, Name: "localhost:5000/a/b", Tag: "t"}},
		{"img@sha256:" + hexA, Reference{Transport: TransportRegistry, Name: "index.docker.io/library/img", Digest: "sha256:" + hexA}},
		{"r.io/img:t@sha256:" + hexA, Reference{Transport: TransportRegistry, Name: "r.io/img", Tag: "t", Digest: "sha256:" + hexA}},
		{"docker-daemon:myimg", Reference{Transport: TransportDaemon, Name: "myimg"}},
		{"docker-daemon:myimg:dev", Reference{Transport: TransportDaemon, Name: "myimg", Tag: "dev"}},
		{"docker-daemon:localhost:5000/x:y", Reference{Transport: TransportDaemon, Name: "localhost:5000/x", Tag: "y"}},
		{"docker-daemon:sha256:" + hexA, Reference{Transport: TransportDaemon, Name: "sha256:" + hexA}},
		{"oci-layout:/srv/img", Reference{Transport: TransportOCILayout, Path: "/srv/img"}},
		{"oci-layout:./img:v2", Reference{Transport: TransportOCILayout, Path: "./img", Tag: "v2"}},
		{"oci-layout:img@sha256:" + hexA, Reference{Transport: TransportOCILayout, Path: "img", Digest: "sha256:" + hexA}},
		{"oci-layout:/a:b/c", Reference{Transport: TransportOCILayout, Path: "/a:b/c"}},
		{"oci-archive:/tmp/x.tar", Reference{Transport: TransportOCIArchive, Path: "/tmp/x.tar"}},
		{"docker-archive:x.tar", Reference{Transport: TransportDockerArchive, Path: "x.tar"}},
		{"/srv/layout", Reference{Transport: TransportOCILayout, Path: "/srv/layout"}},
		{"./layout:t", Reference{Transport: TransportOCILayout, Path: "./layout", Tag: "t"}},
		{layoutDir, Reference{Transport: TransportOCILayout, Path: layoutDir}},
	}
	for _, tc := range ok {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseReference(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			again, err := ParseReference(got.String())
			if err != nil || again != got {
				t.Fatalf("String() %q does not round-trip: %+v, %v", got.String(), again, err)
			}
		})
	}

	bad := []struct{ in, mentions string }{
		{"", "empty"},
		{"alpine:", `tag ""`},
		{"alpine:bad tag", "whitespace"},
		{"Alpine", `"Alpine"`},
		{"img@sha256:abc", `digest "sha256:abc"`},
		{"img@md5:" + hexA[:32], "digest"},
		{"img:-bad", `tag "-bad"`},
		{"docker-daemon:", "image name"},
		{"docker-daemon:img@sha256:" + hexA, "not a digest"},
		{"oci-layout:", "path is empty"},
		{"oci-layout::tag", "path is empty"},
		{"oci-layout:/x:", `tag ""`},
		{"oci-layout:/x@sha256:zz", `digest "sha256:zz"`},
		{"oci-archive:", "archive path"},
		{"docker://alpine", "not supported"},
		{"containers-storage:x", "not supported"},
	}
	for _, tc := range bad {
		t.Run("bad/"+tc.in, func(t *testing.T) {
			r, err := ParseReference(tc.in)
			if err == nil {
				t.Fatalf("accepted as %+v", r)
			}
			if !errors.Is(err, ErrBadReference) || !strings.Contains(err.Error(), tc.mentions) {
				t.Fatalf("error %q should wrap ErrBadReference and mention %q", err, tc.mentions)
			}
		})
	}
}

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"alpine", "a/b:c", "r.io:5000/x/y:z@sha256:" + hexA, "docker-daemon:x:y",
		"oci-layout:/p:t", "oci-layout:p@sha256:" + hexA, "oci-archive:f", "docker-archive:f", "./x", "::", "@", "a@"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReference(s)
		if err != nil {
			if !errors.Is(err, ErrBadReference) {
				t.Fatalf("error %v does not wrap ErrBadReference", err)
			}
			return
		}
		if r.Transport == "" {
			t.Fatalf("%q parsed without a transport", s)
		}
		if r.Digest != "" && !digestRE.MatchString(r.Digest) {
			t.Fatalf("%q: digest %q accepted", s, r.Digest)
		}
		if r.Tag != "" && !tagRE.MatchString(r.Tag) {
			t.Fatalf("%q: tag %q accepted", s, r.Tag)
		}
		again, err := ParseReference(r.String())
		if err != nil {
			t.Fatalf("%q → %+v → %q does not parse: %v", s, r, r.String(), err)
		}
		if again != r {
			t.Fatalf("%q → %+v → %q → %+v", s, r, r.String(), again)
		}
		if r.Transport == TransportRegistry {
			if _, err := r.nameRef(); err != nil {
				t.Fatalf("%q accepted but not usable: %v", s, err)
			}
		}
	})
}
