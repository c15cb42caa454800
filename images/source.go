package images

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Platform is the only platform openshell VMs run. It is part of every cache
// key through ConverterVersion: changing it means bumping that constant.
var Platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// ErrNotFound is wrapped when an image, cache entry or layout entry does not exist.
var ErrNotFound = errors.New("not found")

// source is where one image reference comes from.
type source interface {
	// resolve returns the content digest that identifies the image, as cheaply
	// as the transport allows (no layer is read).
	resolve(ctx context.Context) (digest string, err error)
	// image opens the image resolved to digest. workDir is a scratch directory
	// that lives until the conversion ends. compressedSizes says whether layer
	// Size/Digest/Compressed are cheap (false for docker-archive, whose layers
	// are stored uncompressed and would be re-compressed to answer).
	// progress receives "fetch" updates while a source copies the whole image
	// locally first (daemon save, archive extraction).
	image(ctx context.Context, digest, workDir string, progress func(Progress)) (img v1.Image, compressedSizes bool, err error)
}

func newSource(r Reference) (source, error) {
	switch r.Transport {
	case TransportRegistry:
		if r.Digest == "" {
			// As `docker run` does, a name by tag is looked up in the local image
			// stores first: an image just built with `docker build -t myimage` is used
			// without a registry.
			return &localFirstSource{ref: r, stores: localStores(os.Getenv)}, nil
		}
		return &registrySource{ref: r}, nil
	case TransportOCILayout:
		return &layoutSource{ref: r}, nil
	case TransportOCIArchive:
		return &ociArchiveSource{path: r.Path}, nil
	case TransportDockerArchive:
		return &dockerArchiveSource{path: r.Path}, nil
	case TransportDaemon:
		return &daemonSource{ref: r}, nil
	}
	return nil, fmt.Errorf("%w: unknown transport %q", ErrBadReference, r.Transport)
}

// ---- registry ----

type registrySource struct{ ref Reference }

func (s *registrySource) opts(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(Platform),
	}
}

func (s *registrySource) resolve(ctx context.Context) (string, error) {
	if s.ref.Digest != "" {
		return s.ref.Digest, nil // pinned: no network needed
	}
	nr, err := s.ref.nameRef()
	if err != nil {
		return "", fmt.Errorf("%w %q: %v", ErrBadReference, s.ref, err)
	}
	desc, err := remote.Head(nr, s.opts(ctx)...)
	if err != nil {
		return "", fmt.Errorf("resolve %s in its registry: %w (check the name, network and `docker login` credentials)", nr, err)
	}
	return desc.Digest.String(), nil
}

func (s *registrySource) image(ctx context.Context, digest, _ string, _ func(Progress)) (v1.Image, bool, error) {
	// Fetch by the resolved digest so a tag moving meanwhile cannot mix images.
	d, err := name.NewDigest(s.ref.Name + "@" + digest)
	if err != nil {
		return nil, false, fmt.Errorf("%w %q: %v", ErrBadReference, s.ref, err)
	}
	img, err := remote.Image(d, s.opts(ctx)...)
	if err != nil {
		return nil, false, fmt.Errorf("fetch manifest of %s for %s/%s: %w", d, Platform.OS, Platform.Architecture, err)
	}
	return img, true, nil
}

// ---- OCI layout directory ----

type layoutSource struct{ ref Reference }

func (s *layoutSource) resolve(context.Context) (string, error) {
	raw, err := os.ReadFile(filepath.Join(s.ref.Path, "index.json"))
	if err != nil {
		return "", fmt.Errorf("OCI layout %s: %w (is it an OCI image layout directory?)", s.ref.Path, err)
	}
	d, err := pickFromIndex(raw, s.ref.Tag, s.ref.Digest, "OCI layout "+s.ref.Path)
	if err != nil {
		return "", err
	}
	return d.Digest.String(), nil
}

func (s *layoutSource) image(_ context.Context, digest, _ string, _ func(Progress)) (v1.Image, bool, error) {
	img, err := imageFromLayout(s.ref.Path, digest)
	return img, true, err
}

func imageFromLayout(dir, digest string) (v1.Image, error) {
	lp, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	h, err := v1.NewHash(digest)
	if err != nil {
		return nil, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: index.json: %w", dir, err)
	}
	for _, d := range im.Manifests {
		if d.Digest != h {
			continue
		}
		if d.MediaType.IsIndex() {
			sub, err := idx.ImageIndex(h)
			if err != nil {
				return nil, fmt.Errorf("OCI layout %s: nested index %s: %w", dir, h, err)
			}
			return imageForPlatform(sub, fmt.Sprintf("OCI layout %s index %s", dir, h))
		}
		img, err := idx.Image(h)
		if err != nil {
			return nil, fmt.Errorf("OCI layout %s: image %s: %w", dir, h, err)
		}
		return img, nil
	}
	return nil, fmt.Errorf("OCI layout %s: manifest %s: %w", dir, h, ErrNotFound)
}

func imageForPlatform(idx v1.ImageIndex, what string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	var have []string
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.OS == Platform.OS && d.Platform.Architecture == Platform.Architecture && d.MediaType.IsImage() {
			return idx.Image(d.Digest)
		}
		if d.Platform != nil {
			have = append(have, d.Platform.OS+"/"+d.Platform.Architecture)
		}
	}
	return nil, fmt.Errorf("%s has no %s/%s image (it has %v): %w", what, Platform.OS, Platform.Architecture, have, ErrNotFound)
}

const (
	annotationRefName        = "org.opencontainers.image.ref.name"
	annotationContainerdName = "io.containerd.image.name"
)

// pickFromIndex selects the descriptor an index.json refers to: by digest, by
// tag (ref.name annotation), or the only image when there is one.
func pickFromIndex(raw []byte, tag, digest, what string) (*v1.Descriptor, error) {
	var im v1.IndexManifest
	if err := json.Unmarshal(raw, &im); err != nil {
		return nil, fmt.Errorf("%s: index.json is not valid JSON: %w", what, err)
	}
	var candidates []v1.Descriptor
	var names []string
	for _, d := range im.Manifests {
		if d.MediaType.IsImage() || d.MediaType.IsIndex() {
			candidates = append(candidates, d)
		}
	}
	for _, d := range candidates {
		n := d.Annotations[annotationRefName]
		if n != "" {
			names = append(names, n)
		}
		switch {
		case digest != "":
			if d.Digest.String() == digest {
				return &d, nil
			}
		case tag != "":
			if n == tag || strings.HasSuffix(d.Annotations[annotationContainerdName], ":"+tag) || strings.HasSuffix(n, ":"+tag) {
				return &d, nil
			}
		}
	}
	switch {
	case digest != "":
		return nil, fmt.Errorf("%s has no manifest %s: %w", what, digest, ErrNotFound)
	case tag != "":
		return nil, fmt.Errorf("%s has no image tagged %q (tags: %v): %w", what, tag, names, ErrNotFound)
	case len(candidates) == 1:
		return &candidates[0], nil
	case len(candidates) == 0:
		return nil, fmt.Errorf("%s: index.json lists no image: %w", what, ErrNotFound)
	}
	return nil, fmt.Errorf("%s holds %d images (tags: %v): add :TAG or @DIGEST to pick one", what, len(candidates), names)
}

// ---- OCI archive (tarball of a layout) ----

type ociArchiveSource struct{ path string }

func (s *ociArchiveSource) resolve(context.Context) (string, error) {
	raw, err := readTarMember(s.path, "index.json")
	if err != nil {
		return "", fmt.Errorf("OCI archive %s: %w", s.path, err)
	}
	d, err := pickFromIndex(raw, "", "", "OCI archive "+s.path)
	if err != nil {
		return "", err
	}
	return d.Digest.String(), nil
}

func (s *ociArchiveSource) image(ctx context.Context, digest, workDir string, progress func(Progress)) (v1.Image, bool, error) {
	dir := filepath.Join(workDir, "oci-archive")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, false, err
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil, false, fmt.Errorf("OCI archive %s: %w", s.path, err)
	}
	defer f.Close()
	var total int64
	if st, err := f.Stat(); err == nil {
		total = st.Size()
	}
	pr := &progressReporter{fn: progress, phase: "fetch", total: total}
	// The archive is as untrusted as a layer: extract it with the same
	// contained unpacker.
	err = UnpackLayer(ctx, dir, &countingReader{r: f, pr: pr})
	pr.report(true)
	if err != nil {
		return nil, false, fmt.Errorf("extract OCI archive %s: %w", s.path, err)
	}
	img, err := imageFromLayout(dir, digest)
	return img, true, err
}

// readTarMember returns the content of one small member of a tar file. Layer
// members are skipped by seeking, so this stays cheap for big archives.
func readTarMember(file, member string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("no %s in the archive: %w", member, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("reading tar: %w", err)
		}
		if path.Clean("/"+hdr.Name) != "/"+member || hdr.Typeflag != tar.TypeReg {
			continue
		}
		if hdr.Size > 64<<20 {
			return nil, fmt.Errorf("%s is implausibly large (%d bytes)", member, hdr.Size)
		}
		return io.ReadAll(tr)
	}
}

// ---- docker-archive (docker save) ----

type dockerArchiveSource struct{ path string }

func (s *dockerArchiveSource) resolve(context.Context) (string, error) {
	return dockerArchiveDigest(s.path)
}

// dockerArchiveDigest returns the image ID (the config digest) of the only
// image in a docker save tarball. Docker archives carry no manifest digest;
// the image ID names the same content (the config lists every layer diff ID).
func dockerArchiveDigest(file string) (string, error) {
	raw, err := readTarMember(file, "manifest.json")
	if err != nil {
		return "", fmt.Errorf("docker archive %s: %w", file, err)
	}
	var m tarball.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("docker archive %s: manifest.json: %w", file, err)
	}
	if len(m) != 1 {
		return "", fmt.Errorf("docker archive %s holds %d images; save exactly one image per archive", file, len(m))
	}
	cfg, err := readTarMember(file, path.Clean(m[0].Config))
	if err != nil {
		return "", fmt.Errorf("docker archive %s: config %s: %w", file, m[0].Config, err)
	}
	sum := sha256.Sum256(cfg)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

func (s *dockerArchiveSource) image(_ context.Context, _, _ string, _ func(Progress)) (v1.Image, bool, error) {
	img, err := tarball.ImageFromPath(s.path, nil)
	if err != nil {
		return nil, false, fmt.Errorf("docker archive %s: %w", s.path, err)
	}
	return img, false, nil
}

// ---- local Docker / Podman daemon ----

type daemonSource struct {
	ref Reference
	// host is the daemon's API address (unix:///run/podman/podman.sock); empty =
	// the Docker daemon that DOCKER_HOST, else the default socket, names.
	host string
}

func (s *daemonSource) daemonName() string {
	if s.ref.Tag != "" {
		return s.ref.Name + ":" + s.ref.Tag
	}
	return s.ref.Name
}

func newDaemonClient() (*client.Client, error) {
	return newDaemonClientAt("")
}

func newDaemonClientAt(host string) (*client.Client, error) {
	opt := client.FromEnv
	if host != "" {
		opt = client.WithHost(host)
	}
	c, err := client.New(opt)
	if err != nil {
		if host == "" {
			host = "DOCKER_HOST=" + os.Getenv("DOCKER_HOST")
		}
		return nil, fmt.Errorf("image store client (%s): %w", host, err)
	}
	return c, nil
}

func (s *daemonSource) resolve(ctx context.Context) (string, error) {
	id, host, err := s.inspect(ctx)
	if err != nil {
		return "", fmt.Errorf("inspect %q in the image store at %s: %w (is the daemon running and the image present? `docker pull` or `docker build` it first)", s.daemonName(), host, err)
	}
	return id, nil
}

// inspect returns the image ID and the daemon's address.
func (s *daemonSource) inspect(ctx context.Context) (id, host string, _ error) {
	c, err := newDaemonClientAt(s.host)
	if err != nil {
		return "", s.host, err
	}
	defer c.Close()
	res, err := c.ImageInspect(ctx, s.daemonName())
	if err != nil {
		return "", c.DaemonHost(), err
	}
	if !digestRE.MatchString(res.ID) {
		return "", c.DaemonHost(), fmt.Errorf("the daemon reported image ID %q for %q, not a sha256 digest", res.ID, s.daemonName())
	}
	return res.ID, c.DaemonHost(), nil
}

func (s *daemonSource) image(ctx context.Context, digest, workDir string, progress func(Progress)) (v1.Image, bool, error) {
	c, err := newDaemonClientAt(s.host)
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	rc, err := c.ImageSave(ctx, []string{digest}, client.ImageSaveWithPlatforms(ocispec.Platform{OS: Platform.OS, Architecture: Platform.Architecture}))
	if err != nil {
		// Older daemons reject the platform option; a single-platform save is what we need then.
		rc, err = c.ImageSave(ctx, []string{digest})
	}
	if err != nil {
		return nil, false, fmt.Errorf("save %q from the docker daemon: %w", s.daemonName(), err)
	}
	defer rc.Close()
	tarPath := filepath.Join(workDir, "docker-save.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		return nil, false, err
	}
	pr := &progressReporter{fn: progress, phase: "fetch"}
	_, err = io.Copy(f, &countingReader{r: rc, pr: pr})
	pr.report(true)
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("save %q from the docker daemon: %w", s.daemonName(), err)
	}
	if err := f.Close(); err != nil {
		return nil, false, err
	}
	img, err := tarball.ImageFromPath(tarPath, nil)
	if err != nil {
		return nil, false, fmt.Errorf("read image %q saved by the docker daemon: %w", s.daemonName(), err)
	}
	return img, false, nil
}

// ---- a name by tag: local image stores, then its registry ----

// localStore is a local image store reached through the Docker API: Docker's own, or
// Podman's Docker-compatible socket.
type localStore struct {
	name string // "Docker", "Podman"
	host string // API address; "" = Docker's from the environment
	// missing, when set, says why the store was not asked (no socket there).
	missing string
}

// localStores lists the stores a bare name is looked up in, in order: Docker
// (DOCKER_HOST or its default socket), then Podman (CONTAINER_HOST, else the rootful
// socket, else the rootless one under XDG_RUNTIME_DIR).
func localStores(getenv func(string) string) []localStore {
	stores := []localStore{{name: "Docker"}}
	if h := getenv("DOCKER_HOST"); h == "" {
		if _, err := os.Stat("/var/run/docker.sock"); err != nil {
			stores[0].missing = "no socket at /var/run/docker.sock"
		}
	}
	podman := localStore{name: "Podman"}
	switch h := getenv("CONTAINER_HOST"); {
	case strings.HasPrefix(h, "unix://"):
		podman.host = h
	default:
		cands := []string{"/run/podman/podman.sock"}
		if rt := getenv("XDG_RUNTIME_DIR"); rt != "" {
			cands = append(cands, filepath.Join(rt, "podman", "podman.sock"))
		}
		for _, p := range cands {
			if _, err := os.Stat(p); err == nil {
				podman.host = "unix://" + p
				break
			}
		}
		if podman.host == "" {
			podman.missing = "no socket at " + strings.Join(cands, " or ")
		}
	}
	return append(stores, podman)
}

// localName is how the local stores name a registry reference: Docker Hub's
// "index.docker.io/library/x:tag" is "x:tag" there.
func localName(r Reference) Reference {
	n := r.Name
	for _, p := range []string{"index.docker.io/library/", "index.docker.io/"} {
		if rest, ok := strings.CutPrefix(n, p); ok {
			n = rest
			break
		}
	}
	return Reference{Transport: TransportDaemon, Name: n, Tag: r.Tag}
}

// localFirstSource resolves a registry name by tag in the local image stores, then
// in its registry; the first that has it serves the image. When none does, the
// error names every place tried.
type localFirstSource struct {
	ref    Reference
	stores []localStore
	chosen source
}

func (s *localFirstSource) resolve(ctx context.Context) (string, error) {
	local := localName(s.ref)
	var tried []string
	for _, st := range s.stores {
		if st.missing != "" {
			tried = append(tried, fmt.Sprintf("the local %s image store (%s)", st.name, st.missing))
			continue
		}
		d := &daemonSource{ref: local, host: st.host}
		digest, host, err := d.inspect(ctx)
		if err == nil {
			s.chosen = d
			return digest, nil
		}
		tried = append(tried, fmt.Sprintf("the local %s image store at %s (%v)", st.name, host, err))
	}
	r := &registrySource{ref: s.ref}
	digest, err := r.resolve(ctx)
	if err != nil {
		return "", fmt.Errorf("image %s was not found; tried %s, then %w", (&daemonSource{ref: local}).daemonName(), strings.Join(tried, ", "), err)
	}
	s.chosen = r
	return digest, nil
}

func (s *localFirstSource) image(ctx context.Context, digest, workDir string, progress func(Progress)) (v1.Image, bool, error) {
	if s.chosen == nil {
		return nil, false, errors.New("image source used before it was resolved")
	}
	return s.chosen.image(ctx, digest, workDir, progress)
}
