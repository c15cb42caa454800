package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// imageBuilder builds a directory or Dockerfile into a local image and returns its tag.
type imageBuilder func(ctx context.Context, pathOrDockerfile, tag string, progress io.Writer) (string, error)

// engineBuild builds with the local engine ("docker": the Docker daemon's classic
// builder; "podman": the Podman service the podman driver uses) by running
// `openshell-gateway build-image`, which links the engine clients so this binary
// does not. Its output is the build's progress; its last stderr line the error.
func engineBuild(engine string) imageBuilder {
	return func(ctx context.Context, path, tag string, progress io.Writer) (string, error) {
		bin, err := findGateway()
		if err != nil {
			return "", fmt.Errorf("the image build runs in openshell-gateway: %w", err)
		}
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, bin, "build-image", "--engine", engine, "--tag", tag, "--", path)
		cmd.Stdout, cmd.Stderr = progress, &stderr
		if err := cmd.Run(); err != nil {
			if msg := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(stderr.String()), "openshell-gateway: ")); msg != "" {
				return "", errors.New(msg)
			}
			return "", fmt.Errorf("%s build-image: %w", bin, err)
		}
		return tag, nil
	}
}

// builderFor is the image builder for the gateway's driver: Podman builds for the
// podman driver, the Docker daemon for everything else.
func builderFor(driver string) imageBuilder {
	if driver == "podman" {
		return engineBuild("podman")
	}
	return engineBuild("docker")
}

var unsafeTagChars = regexp.MustCompile(`[^a-z0-9._-]+`)

// resolveFrom turns `--from` into the image reference the gateway's driver can use.
// An image reference passes through. A local path is handled here, because the
// gateway's driver may not see the CLI's files:
//   - a directory with an OCI layout (index.json): the VM driver reads it directly;
//   - a directory or Dockerfile: built by the local Docker daemon with progress on
//     progress, then used by tag (docker) or through the daemon (vm: docker-daemon:TAG);
//   - a .tar: an image archive for the VM driver (docker-archive: / oci-archive:).
func resolveFrom(ctx context.Context, from, sandboxName, driver string, build imageBuilder, progress io.Writer) (string, error) {
	st, err := os.Stat(from)
	if from == "" || err != nil {
		return from, nil // not a local path: an image reference for the driver to resolve
	}
	abs, err := filepath.Abs(from)
	if err != nil {
		return "", fmt.Errorf("--from %s: %w", from, err)
	}
	isVM := driver == "vm"
	if st.IsDir() {
		if _, err := os.Stat(filepath.Join(abs, "index.json")); err == nil {
			if !isVM {
				return "", fmt.Errorf("--from %s is an OCI layout, which the %s driver cannot read; load it into the engine first (e.g. skopeo copy oci:%s docker-daemon:NAME) and pass --from NAME", from, driverOrUnknown(driver), from)
			}
			return "oci-layout:" + abs, nil
		}
	} else if strings.HasSuffix(abs, ".tar") {
		if !isVM {
			return "", fmt.Errorf("--from %s is an image archive; load it with `docker load -i %s` and pass --from with the loaded image name", from, from)
		}
		return archiveRef(abs)
	}
	base := filepath.Base(abs)
	if !st.IsDir() {
		base = filepath.Base(filepath.Dir(abs))
	}
	if sandboxName != "" {
		base = sandboxName
	}
	tagName := strings.Trim(unsafeTagChars.ReplaceAllString(strings.ToLower(base), "-"), "-._")
	if tagName == "" {
		tagName = "image"
	}
	tag := "openshell-build/" + tagName + ":latest"
	engine := "Docker daemon"
	if driver == "podman" {
		engine = "Podman service"
	}
	fmt.Fprintf(progress, "building %s with the local %s as %s\n", from, engine, tag)
	built, err := build(ctx, abs, tag, progress)
	if err != nil {
		return "", fmt.Errorf("--from %s: build failed: %w", from, err)
	}
	if isVM {
		return "docker-daemon:" + built, nil
	}
	return built, nil
}

// archiveRef names a tarball by its format: OCI archives carry an oci-layout file.
func archiveRef(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("--from %s: %w", path, err)
	}
	defer f.Close()
	if isOCIArchive(f) {
		return "oci-archive:" + path, nil
	}
	return "docker-archive:" + path, nil
}

func driverOrUnknown(d string) string {
	if d == "" {
		return "gateway's"
	}
	return d
}

// isOCIArchive reports whether a tar stream holds an OCI image layout (an
// "oci-layout" file at its root); a docker save archive has a manifest.json instead.
func isOCIArchive(r io.Reader) bool {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return false
		}
		if strings.TrimPrefix(hdr.Name, "./") == "oci-layout" {
			return true
		}
	}
}

// resolveImage resolves a --from (or a pool's --image) with resolveFrom, asking the
// gateway for its driver only when it names a local path (an image reference needs no
// round trip). name names the image a build makes.
func (a *app) resolveImage(ctx context.Context, image, name, flag string, progress io.Writer) (string, error) {
	if _, err := os.Stat(image); image == "" || err != nil {
		return image, nil
	}
	_, driver, err := a.health(ctx)
	if err != nil {
		return "", fmt.Errorf("%s %s is a local path; asking the gateway which driver it uses: %w", flag, image, err)
	}
	return resolveFrom(ctx, image, name, driver, builderFor(driver), progress)
}
