// Command mkimage writes the gateway's container image as a docker-archive tarball
// (what `docker load` and `ctr images import` read) without a daemon, a registry or a
// base image: one layer holding the static binaries, a CA bundle, /etc/passwd and
// /etc/group with a non-root user, and /tmp. The same image is the Kubernetes
// driver's supervisor image: an init container copies openshell-sandbox out of it.
//
//	mkimage -tag openshell/gateway:0.1.0 -out gateway.tar \
//	  -bin openshell-gateway=PATH -bin openshell-sandbox=PATH -bin openshell-copy=PATH
//
// Every file has a fixed owner and time, so the same inputs give the same image id.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/openshell/openshell/internal/staticbin"
)

// The unprivileged user the gateway runs as (the uid distroless images call nonroot,
// so Pod securityContexts written for those fit).
const (
	uid      = 65532
	userName = "openshell"
	binDir   = "/usr/local/bin"
	stateDir = "/var/lib/openshell"
)

type binFlag map[string]string

func (b binFlag) String() string { return fmt.Sprint(map[string]string(b)) }
func (b binFlag) Set(v string) error {
	n, p, ok := strings.Cut(v, "=")
	if !ok || n == "" || p == "" || strings.Contains(n, "/") {
		return fmt.Errorf("-bin %q: want NAME=PATH, e.g. openshell-gateway=bin/openshell-gateway", v)
	}
	b[n] = p
	return nil
}

func main() {
	bins := binFlag{}
	tag := flag.String("tag", "", "image reference to record in the archive, e.g. openshell/gateway:0.1.0")
	out := flag.String("out", "", "docker-archive tarball to write")
	caFile := flag.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "CA bundle copied to /etc/ssl/certs/ca-certificates.crt")
	version := flag.String("version", "", "value of the org.opencontainers.image.version label")
	flag.Var(bins, "bin", "NAME=PATH of a static executable placed in "+binDir+" (repeat); openshell-gateway is the entrypoint")
	flag.Parse()
	if err := run(*tag, *out, *caFile, *version, bins); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(tag, out, caFile, version string, bins map[string]string) error {
	if tag == "" || out == "" {
		return errors.New("-tag and -out are required")
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("-tag %q: %w", tag, err)
	}
	if _, ok := bins["openshell-gateway"]; !ok {
		return errors.New("-bin openshell-gateway=PATH is required: it is the image's entrypoint")
	}
	layer, arch, err := rootfs(caFile, bins)
	if err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", uid, uid),
		Entrypoint: []string{binDir + "/openshell-gateway"},
		WorkingDir: "/",
		Env: []string{
			"PATH=" + binDir,
			"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
			// In a container the gateway serves the pod network, keeps its state in
			// the volume mounted here and has no use for a local Unix socket.
			"OPENSHELL_BIND_ADDRESS=0.0.0.0",
			"OPENSHELL_STATE_DIR=" + stateDir + "/gateway",
			"OPENSHELL_SOCKET=none",
		},
		ExposedPorts: map[string]struct{}{"17670/tcp": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":   "openshell-gateway",
			"org.opencontainers.image.version": version,
		},
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}

// rootfs builds the layer's tar and returns the image architecture the binaries share.
func rootfs(caFile string, bins map[string]string) ([]byte, string, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dir := func(p string, mode int64, owner int) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode, Uid: owner, Gid: owner, ModTime: epoch})
	}
	file := func(p string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"etc", "etc/ssl", "etc/ssl/certs", "usr", "usr/local", "usr/local/bin", "var", "var/lib"} {
		if err := dir(d, 0o755, 0); err != nil {
			return nil, "", err
		}
	}
	if err := dir("tmp", 0o1777, 0); err != nil {
		return nil, "", err
	}
	if err := dir(strings.TrimPrefix(stateDir, "/"), 0o700, uid); err != nil {
		return nil, "", err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:openshell:%s:/sbin/nologin\n", userName, uid, uid, stateDir)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", userName, uid)
	if err := file("etc/passwd", 0o644, []byte(passwd)); err != nil {
		return nil, "", err
	}
	if err := file("etc/group", 0o644, []byte(group)); err != nil {
		return nil, "", err
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, "", fmt.Errorf("-ca-bundle: %w; install Debian's ca-certificates or point -ca-bundle at a PEM bundle", err)
	}
	if err := file("etc/ssl/certs/ca-certificates.crt", 0o644, ca); err != nil {
		return nil, "", err
	}
	names := make([]string, 0, len(bins))
	for n := range bins {
		names = append(names, n)
	}
	sort.Strings(names)
	arch := ""
	for _, n := range names {
		data, err := os.ReadFile(bins[n])
		if err != nil {
			return nil, "", fmt.Errorf("-bin %s: %w", n, err)
		}
		m, err := staticbin.Machine(bytes.NewReader(data))
		if err != nil {
			return nil, "", fmt.Errorf("-bin %s=%s %w; the image has no libc: build it with CGO_ENABLED=0", n, bins[n], err)
		}
		a, err := goArch(m)
		if err != nil {
			return nil, "", fmt.Errorf("-bin %s: %w", n, err)
		}
		if arch != "" && a != arch {
			return nil, "", fmt.Errorf("-bin %s is %s but the others are %s; build all binaries with one GOARCH", n, a, arch)
		}
		arch = a
		if err := file(path.Join(strings.TrimPrefix(binDir, "/"), n), 0o755, data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), arch, nil
}

func goArch(m elf.Machine) (string, error) {
	switch m {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	}
	return "", fmt.Errorf("machine %v is not supported; build for amd64 or arm64", m)
}
