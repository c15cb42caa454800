package images

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/client"

	"github.com/openshell/openshell/internal/testenv"
)

// requireDaemon returns a client for a running Docker (or Podman) daemon.
func requireDaemon(t *testing.T) *client.Client {
	t.Helper()
	c, err := newDaemonClient()
	if err == nil {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		_, err = c.Ping(ctx, client.PingOptions{})
	}
	testenv.Require(t, err == nil, fmt.Sprintf("no Docker daemon reachable (%v): run scripts/setup-docker.sh", err))
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEnsureDockerDaemon(t *testing.T) {
	requireTools(t)
	dc := requireDaemon(t)
	ctx := t.Context()
	img := benignImage(t)
	tagName := fmt.Sprintf("openshell-images-test:%d", time.Now().UnixNano())
	tag, err := name.NewTag(tagName)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tarball.Write(tag, img, &buf); err != nil {
		t.Fatal(err)
	}
	res, err := dc.ImageLoad(ctx, &buf)
	if err != nil {
		t.Fatalf("docker load: %v", err)
	}
	out, _ := io.ReadAll(res)
	res.Close()
	t.Logf("docker load: %s", out)
	t.Cleanup(func() {
		if _, err := dc.ImageRemove(context.Background(), tagName, client.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Errorf("remove test image %s: %v", tagName, err)
		}
	})

	c := newTestCache(t)
	var ph phases
	e, err := c.Ensure(ctx, "docker-daemon:"+tagName, ph.fn)
	if err != nil {
		t.Fatal(err)
	}
	if !digestRE.MatchString(e.Digest) {
		t.Errorf("Digest %q is not an image ID", e.Digest)
	}
	checkBenignDisk(t, e.DiskPath)
	if e.Config.WorkingDir != "/work" || len(e.Config.Entrypoint) != 1 {
		t.Errorf("Config = %+v", e.Config)
	}
	var ph2 phases
	start := time.Now()
	e2, err := c.Ensure(ctx, "docker-daemon:"+tagName, ph2.fn)
	if err != nil || e2.Key != e.Key || ph2.has("convert") {
		t.Errorf("second Ensure: %v %v phases %v", e2, err, ph2.seen)
	}
	// Our side is one ImageInspect call; the daemon's answer time is not ours
	// to promise, so the bound is looser than for the other sources.
	if took := time.Since(start); took > time.Second {
		t.Errorf("cached Ensure took %v", took)
	}
	if _, err := c.Ensure(ctx, "docker-daemon:openshell-images-test:does-not-exist", nil); err == nil {
		t.Error("missing daemon image: no error")
	}
}

// A bare name (what `docker build -t NAME` makes) is found in the local Docker store
// before any registry is asked; a name no store has fails naming every place tried.
func TestBareNameFromLocalStore(t *testing.T) {
	requireTools(t)
	dc := requireDaemon(t)
	ctx := t.Context()
	repo := fmt.Sprintf("openshell-bare-%d", time.Now().UnixNano())
	tag, err := name.NewTag(repo + ":latest")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tarball.Write(tag, benignImage(t), &buf); err != nil {
		t.Fatal(err)
	}
	res, err := dc.ImageLoad(ctx, &buf)
	if err != nil {
		t.Fatalf("docker load: %v", err)
	}
	_, _ = io.Copy(io.Discard, res)
	res.Close()
	t.Cleanup(func() {
		if _, err := dc.ImageRemove(context.Background(), repo+":latest", client.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil {
			t.Errorf("remove test image %s: %v", repo, err)
		}
	})
	want, err := dc.ImageInspect(ctx, repo+":latest")
	if err != nil {
		t.Fatal(err)
	}

	c := newTestCache(t)
	e, err := c.Ensure(ctx, repo, nil) // bare, as a user types it
	if err != nil {
		t.Fatalf("Ensure(%q): %v", repo, err)
	}
	if e.Digest != want.ID {
		t.Errorf("digest %s, want the local image's ID %s", e.Digest, want.ID)
	}
	checkBenignDisk(t, e.DiskPath)

	// No store has it: the registry is tried last and the error lists all three.
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err = c.Ensure(tctx, repo+"-missing", nil)
	if err == nil {
		t.Fatal("a name in no store resolved")
	}
	t.Logf("a name in no store: %v", err)
	for _, w := range []string{"local Docker image store", "local Podman image store", "index.docker.io/library/" + repo + "-missing:latest"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not name %q: %v", w, err)
		}
	}
}

func TestLocalStores(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	dir := t.TempDir()
	sock := filepath.Join(dir, "podman", "podman.sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st := localStores(env(map[string]string{"DOCKER_HOST": "tcp://127.0.0.1:1", "XDG_RUNTIME_DIR": dir}))
	if len(st) != 2 || st[0].name != "Docker" || st[0].missing != "" || st[1].name != "Podman" {
		t.Fatalf("stores = %+v", st)
	}
	if _, err := os.Stat("/run/podman/podman.sock"); err != nil && st[1].host != "unix://"+sock {
		t.Errorf("rootless Podman socket not found: %+v", st[1])
	}
	st = localStores(env(map[string]string{"CONTAINER_HOST": "unix:///x/podman.sock"}))
	if st[1].host != "unix:///x/podman.sock" {
		t.Errorf("CONTAINER_HOST ignored: %+v", st[1])
	}
	if got := localName(MustParseReference("myimage")); got.Name != "myimage" || got.Tag != "latest" {
		t.Errorf("localName(myimage) = %+v", got)
	}
	if got := localName(MustParseReference("ghcr.io/org/img:1")); got.Name != "ghcr.io/org/img" || got.Tag != "1" {
		t.Errorf("localName(ghcr.io/org/img:1) = %+v", got)
	}
}
