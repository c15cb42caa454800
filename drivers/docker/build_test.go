package docker

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"github.com/openshell/openshell/drivers/drivertest"
)

// BuildImage builds from a directory and from a Dockerfile path with the classic
// builder, honours .dockerignore, streams progress; a sandbox from the built image
// (which declares a VOLUME) leaves no anonymous volume behind after Delete.
func TestBuildImageAndVolumes(t *testing.T) {
	requireDocker(t)
	ctx := t.Context()
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("Dockerfile", "FROM "+testImage+"\nUSER root\nCOPY . /ctx/\nRUN ls /ctx > /ctx-listing\nVOLUME /data\n")
	write("kept.txt", "kept\n")
	write("secret.key", "must not be sent\n")
	write(".dockerignore", "# comment\n*.key\n")
	write("Other.dockerfile", "FROM "+testImage+"\nUSER root\nRUN echo other > /other\n")

	tag := "openshell-test/build-" + testRunID + ":latest"
	tag2 := "openshell-test/build2-" + testRunID + ":latest"
	cli, err := client.New(client.FromEnv)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	t.Cleanup(func() {
		for _, ref := range []string{tag, tag2} {
			_, _ = cli.ImageRemove(context.Background(), ref, client.ImageRemoveOptions{Force: true, PruneChildren: true})
		}
		// The failing build leaves its last intermediate image, untagged.
		_, _ = execCommand("docker", "image", "prune", "-f")
	})

	var progress strings.Builder
	id, err := BuildImage(ctx, dir, tag, &progress)
	if err != nil {
		t.Fatalf("BuildImage(dir): %v\n%s", err, progress.String())
	}
	img, err := cli.ImageInspect(ctx, tag)
	if err != nil || img.ID != id {
		t.Fatalf("built image %s: inspect = %v, %v", id, img.ID, err)
	}
	if !strings.Contains(progress.String(), "Step 1/") {
		t.Errorf("progress lacks the builder's steps:\n%s", progress.String())
	}
	listing := dockerCLI(t, "run", "--rm", "--entrypoint", "cat", tag, "/ctx-listing")
	if !strings.Contains(listing, "kept.txt") || strings.Contains(listing, "secret.key") {
		t.Errorf("build context listing %q: want kept.txt and no secret.key", listing)
	}

	if _, err := BuildImage(ctx, filepath.Join(dir, "Other.dockerfile"), tag2, nil); err != nil {
		t.Fatalf("BuildImage(Dockerfile path): %v", err)
	}
	if got := dockerCLI(t, "run", "--rm", "--entrypoint", "cat", tag2, "/other"); got != "other" {
		t.Errorf("/other = %q", got)
	}

	write("Broken.dockerfile", "FROM "+testImage+"\nRUN exit 7\n")
	if _, err := BuildImage(ctx, filepath.Join(dir, "Broken.dockerfile"), tag2, nil); err == nil || !strings.Contains(err.Error(), tag2) {
		t.Errorf("BuildImage(failing RUN) = %v, want an error naming %s", err, tag2)
	}
	if _, err := BuildImage(ctx, filepath.Join(dir, "missing"), tag2, nil); err == nil {
		t.Errorf("BuildImage(missing path) succeeded")
	}

	// A sandbox from the built image gets an anonymous volume for /data; Delete removes it.
	d := newTestDriver(t, testConfig(t))
	sid, name := drivertest.NewIDs()
	createReady(ctx, t, d, drivertest.DefaultSandbox(sid, name, tag))
	ins, err := cli.ContainerInspect(ctx, containerName(name), client.ContainerInspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var vol string
	for _, m := range ins.Container.Mounts {
		if m.Destination == "/data" {
			vol = m.Name
		}
	}
	if vol == "" {
		t.Fatalf("no anonymous volume for /data in %+v", ins.Container.Mounts)
	}
	if deleted, err := d.Delete(ctx, sid, name); err != nil || !deleted {
		t.Fatalf("Delete = %v, %v", deleted, err)
	}
	if _, err := cli.VolumeInspect(ctx, vol, client.VolumeInspectOptions{}); !isNotFound(err) {
		t.Errorf("volume %s survives Delete: %v", vol, err)
	}
}
