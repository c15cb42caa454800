package images

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Transport says where an image comes from.
type Transport string

const (
	// TransportRegistry is a registry image: "registry/repo:tag", "repo@sha256:…",
	// or a Docker Hub short name such as "alpine".
	TransportRegistry Transport = "registry"
	// TransportDaemon is an image in the local Docker (or Podman, through its
	// Docker-compatible socket) daemon: "docker-daemon:NAME[:TAG]".
	TransportDaemon Transport = "docker-daemon"
	// TransportOCILayout is an OCI image layout directory: "oci-layout:PATH[:TAG|@DIGEST]".
	TransportOCILayout Transport = "oci-layout"
	// TransportOCIArchive is a tarball of an OCI image layout: "oci-archive:PATH".
	TransportOCIArchive Transport = "oci-archive"
	// TransportDockerArchive is a `docker save` tarball: "docker-archive:PATH".
	TransportDockerArchive Transport = "docker-archive"
)

// ErrBadReference is wrapped by every error ParseReference returns.
var ErrBadReference = errors.New("invalid image reference")

// Reference is a parsed image reference. Which fields are set depends on Transport:
// registry and daemon references set Name (and Tag/Digest when given); layout and
// archive references set Path (layouts may set Tag or Digest to pick an image).
type Reference struct {
	Transport Transport
	// Name is the repository: fully qualified for registry references
	// ("index.docker.io/library/alpine"), as written for daemon references.
	Name string
	// Path is the layout directory or archive file, as written.
	Path   string
	Tag    string
	Digest string
}

var (
	tagRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	// daemon image IDs may be given bare ("sha256:…" or a hex prefix of at least 12).
	imageIDRE = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|[a-f0-9]{12,64})$`)
)

// ParseReference parses every reference form openshell accepts:
//
//	alpine, alpine:3.20, ghcr.io/org/img:tag, img@sha256:<64 hex>  (registry)
//	docker-daemon:NAME[:TAG]                                       (local daemon)
//	oci-layout:PATH[:TAG|@sha256:<64 hex>]                         (OCI layout dir)
//	oci-archive:PATH, docker-archive:PATH                          (tarballs)
//
// A bare path starting with "/" or "." — or any existing directory holding an
// index.json — is taken as an OCI layout. Errors name the part that is wrong.
func ParseReference(s string) (Reference, error) {
	if s == "" {
		return Reference{}, fmt.Errorf("%w: empty string; give e.g. \"alpine:3.20\" or \"oci-layout:/path/to/dir\"", ErrBadReference)
	}
	if strings.ContainsAny(s, " \t\r\n\x00") {
		return Reference{}, fmt.Errorf("%w %q: contains whitespace or NUL", ErrBadReference, s)
	}
	if t, rest, ok := strings.Cut(s, ":"); ok {
		switch Transport(t) {
		case TransportDaemon:
			return parseDaemon(s, rest)
		case TransportOCILayout:
			return parseLayout(s, rest)
		case TransportOCIArchive, TransportDockerArchive:
			if rest == "" {
				return Reference{}, fmt.Errorf("%w %q: the archive path after %q is empty", ErrBadReference, s, t+":")
			}
			return Reference{Transport: Transport(t), Path: rest}, nil
		case "docker", "oci", "dir", "containers-storage":
			return Reference{}, fmt.Errorf("%w %q: transport %q is not supported; use a plain registry reference, docker-daemon:, oci-layout:, oci-archive: or docker-archive: references", ErrBadReference, s, t)
		}
	}
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") || isLayoutDir(s) {
		return parseLayout(s, s)
	}
	return parseRegistry(s)
}

// MustParseReference is ParseReference for constants in tests and defaults.
func MustParseReference(s string) Reference {
	r, err := ParseReference(s)
	if err != nil {
		panic(err)
	}
	return r
}

// String renders the reference so that ParseReference gives it back.
func (r Reference) String() string {
	switch r.Transport {
	case TransportRegistry:
		s := r.Name
		if r.Tag != "" {
			s += ":" + r.Tag
		}
		if r.Digest != "" {
			s += "@" + r.Digest
		}
		return s
	case TransportDaemon:
		if r.Tag != "" {
			return "docker-daemon:" + r.Name + ":" + r.Tag
		}
		return "docker-daemon:" + r.Name
	case TransportOCILayout:
		s := "oci-layout:" + r.Path
		if r.Tag != "" {
			s += ":" + r.Tag
		}
		if r.Digest != "" {
			s += "@" + r.Digest
		}
		return s
	case TransportOCIArchive, TransportDockerArchive:
		return string(r.Transport) + ":" + r.Path
	}
	return ""
}

func isLayoutDir(p string) bool {
	st, err := os.Stat(filepath.Join(p, "index.json"))
	return err == nil && st.Mode().IsRegular()
}

func parseDaemon(full, rest string) (Reference, error) {
	if rest == "" {
		return Reference{}, fmt.Errorf("%w %q: the image name after \"docker-daemon:\" is empty", ErrBadReference, full)
	}
	if imageIDRE.MatchString(rest) {
		return Reference{Transport: TransportDaemon, Name: rest}, nil
	}
	if strings.Contains(rest, "@") {
		return Reference{}, fmt.Errorf("%w %q: docker-daemon: takes NAME[:TAG] or an image ID, not a digest reference", ErrBadReference, full)
	}
	repo, tag, hasTag := splitTag(rest)
	if hasTag && !tagRE.MatchString(tag) {
		return Reference{}, fmt.Errorf("%w %q: tag %q is not valid (letters, digits, '_', '.', '-'; at most 128)", ErrBadReference, full, tag)
	}
	if _, err := name.NewRepository(repo); err != nil {
		return Reference{}, fmt.Errorf("%w %q: image name %q: %v", ErrBadReference, full, repo, err)
	}
	return Reference{Transport: TransportDaemon, Name: repo, Tag: tag}, nil
}

// splitTag splits "host:port/repo:tag" at the tag colon, which is the last colon
// after the last slash.
func splitTag(s string) (repo, tag string, hasTag bool) {
	slash := strings.LastIndex(s, "/")
	if i := strings.LastIndex(s, ":"); i > slash {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

func parseLayout(full, rest string) (Reference, error) {
	r := Reference{Transport: TransportOCILayout}
	p := rest
	slash := strings.LastIndex(p, "/")
	if i := strings.LastIndex(p, "@"); i > slash {
		r.Digest = p[i+1:]
		p = p[:i]
		if !digestRE.MatchString(r.Digest) {
			return Reference{}, fmt.Errorf("%w %q: digest %q is not of the form sha256:<64 lowercase hex>", ErrBadReference, full, r.Digest)
		}
	}
	if i := strings.LastIndex(p, ":"); i > slash {
		r.Tag = p[i+1:]
		p = p[:i]
		if !tagRE.MatchString(r.Tag) {
			return Reference{}, fmt.Errorf("%w %q: tag %q is not valid (letters, digits, '_', '.', '-'; at most 128)", ErrBadReference, full, r.Tag)
		}
	}
	if p == "" {
		return Reference{}, fmt.Errorf("%w %q: the layout directory path is empty", ErrBadReference, full)
	}
	r.Path = p
	return r, nil
}

func parseRegistry(s string) (Reference, error) {
	rest := s
	var dig string
	if i := strings.Index(rest, "@"); i >= 0 {
		dig = rest[i+1:]
		rest = rest[:i]
		if !digestRE.MatchString(dig) {
			return Reference{}, fmt.Errorf("%w %q: digest %q is not of the form sha256:<64 lowercase hex>", ErrBadReference, s, dig)
		}
	}
	repo, tag, hasTag := splitTag(rest)
	if repo == "" {
		return Reference{}, fmt.Errorf("%w %q: the repository name is empty", ErrBadReference, s)
	}
	if hasTag && !tagRE.MatchString(tag) {
		return Reference{}, fmt.Errorf("%w %q: tag %q is not valid (letters, digits, '_', '.', '-'; at most 128)", ErrBadReference, s, tag)
	}
	nr, err := name.NewRepository(repo)
	if err == nil {
		// Short names grow ("x" → "index.docker.io/library/x"): the full name
		// must still be valid, or the reference could not be printed back.
		_, err = name.NewRepository(nr.Name())
	}
	if err != nil {
		return Reference{}, fmt.Errorf("%w %q: repository %q: %v", ErrBadReference, s, repo, err)
	}
	if tag == "" && dig == "" {
		tag = "latest"
	}
	return Reference{Transport: TransportRegistry, Name: nr.Name(), Tag: tag, Digest: dig}, nil
}

// nameRef turns a registry Reference into a go-containerregistry reference,
// preferring the digest when both are given.
func (r Reference) nameRef() (name.Reference, error) {
	if r.Digest != "" {
		return name.NewDigest(r.Name + "@" + r.Digest)
	}
	return name.NewTag(r.Name + ":" + r.Tag)
}
