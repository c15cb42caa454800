package main

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openshell/openshell/internal/testenv"
)

func TestResolveFromPaths(t *testing.T) {
	dir := t.TempDir()
	layout := filepath.Join(dir, "layout")
	os.MkdirAll(layout, 0o755)
	os.WriteFile(filepath.Join(layout, "index.json"), []byte(`{}`), 0o644)
	ctxDir := filepath.Join(dir, "My App")
	os.MkdirAll(ctxDir, 0o755)
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\n"), 0o644)
	ociTar := filepath.Join(dir, "img-oci.tar")
	writeTar(t, ociTar, "oci-layout", "index.json")
	dockerTar := filepath.Join(dir, "img-docker.tar")
	writeTar(t, dockerTar, "manifest.json")

	var built []string
	build := func(_ context.Context, path, tag string, _ io.Writer) (string, error) {
		built = append(built, path+"="+tag)
		return tag, nil
	}
	for _, tc := range []struct {
		from, name, driver, want, wantErr string
	}{
		{from: "ubuntu:24.04", driver: "vm", want: "ubuntu:24.04"},
		{from: "", driver: "docker", want: ""},
		{from: layout, driver: "vm", want: "oci-layout:" + layout},
		{from: layout, driver: "docker", wantErr: "OCI layout"},
		{from: ociTar, driver: "vm", want: "oci-archive:" + ociTar},
		{from: dockerTar, driver: "vm", want: "docker-archive:" + dockerTar},
		{from: dockerTar, driver: "docker", wantErr: "docker load"},
		{from: ctxDir, driver: "docker", want: "openshell-build/my-app:latest"},
		{from: ctxDir, name: "dev", driver: "vm", want: "docker-daemon:openshell-build/dev:latest"},
		{from: filepath.Join(ctxDir, "Dockerfile"), driver: "docker", want: "openshell-build/my-app:latest"},
	} {
		got, err := resolveFrom(t.Context(), tc.from, tc.name, tc.driver, build, io.Discard)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("resolveFrom(%q, %s) error = %v, want one mentioning %q", tc.from, tc.driver, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("resolveFrom(%q, %s) = %q, %v; want %q", tc.from, tc.driver, got, err, tc.want)
		}
	}
	if len(built) != 3 {
		t.Errorf("builds: %v, want three (two directories and one Dockerfile)", built)
	}
}

func writeTar(t *testing.T, path string, names ...string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: 2})
		tw.Write([]byte("{}"))
	}
	tw.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestResolveFromBuildsWithDocker builds a directory with the real daemon.
func TestResolveFromBuildsWithDocker(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image with the Docker daemon; not in -short")
	}
	ok, why := dockerReady()
	testenv.Require(t, ok, why)
	cliEnv(t, "openshell-gateway") // the build runs in openshell-gateway build-image
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY hello.txt /hello.txt\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hi\n"), 0o644)
	var progress bytes.Buffer
	ref, err := resolveFrom(t.Context(), dir, "from-test", "docker", engineBuild("docker"), &progress)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress.String())
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", ref).Run() })
	if ref != "openshell-build/from-test:latest" {
		t.Fatalf("ref = %q", ref)
	}
	if !strings.Contains(progress.String(), "COPY hello.txt") {
		t.Errorf("no build progress shown: %q", progress.String())
	}
	if out, err := exec.Command("docker", "image", "inspect", "-f", "{{.Id}}", ref).CombinedOutput(); err != nil {
		t.Errorf("built image not in the daemon: %v %s", err, out)
	}
	// A broken Dockerfile is a build error naming the path.
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY missing.txt /\n"), 0o644)
	if _, err := resolveFrom(t.Context(), dir, "from-test", "docker", engineBuild("docker"), io.Discard); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("broken build: %v", err)
	}
}
