package images

import (
	"bytes"
	"context"
	"fmt"
	"io"
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
