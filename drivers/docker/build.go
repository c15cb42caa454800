package docker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/moby/moby/api/types/build"
	"github.com/moby/moby/client"

	"github.com/openshell/openshell/drivers/buildctx"
)

// BuildImage builds an image from a directory (with a Dockerfile in it) or from a
// Dockerfile path (its directory is the build context) and tags it tag, using the
// daemon at $DOCKER_HOST (default unix:///var/run/docker.sock). The daemon's output is
// streamed to progress (may be nil). It returns the image id. The classic builder is
// used, so no BuildKit is needed.
func BuildImage(ctx context.Context, pathOrDockerfile, tag string, progress io.Writer) (string, error) {
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix://" + defaultSocketPath
	}
	cli, err := client.New(client.WithHost(host))
	if err != nil {
		return "", fmt.Errorf("docker build: host %q: %w", host, err)
	}
	defer cli.Close()
	return buildImage(ctx, cli, pathOrDockerfile, tag, progress)
}

// BuildImage is BuildImage against the driver's daemon.
func (d *Driver) BuildImage(ctx context.Context, pathOrDockerfile, tag string, progress io.Writer) (string, error) {
	return buildImage(ctx, d.cli, pathOrDockerfile, tag, progress)
}

func buildImage(ctx context.Context, cli *client.Client, pathOrDockerfile, tag string, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	pr, dockerfile, err := buildctx.Open("docker build", pathOrDockerfile, tag)
	if err != nil {
		return "", err
	}
	defer pr.Close()

	res, err := cli.ImageBuild(ctx, pr, client.ImageBuildOptions{
		Tags:        []string{tag},
		Dockerfile:  dockerfile,
		Remove:      true,
		ForceRemove: true,
		Version:     build.BuilderV1,
	})
	if err != nil {
		if isDaemonDown(err) {
			return "", fmt.Errorf("docker build %s: the Docker daemon does not answer: %w; start it with scripts/setup-docker.sh", tag, err)
		}
		return "", fmt.Errorf("docker build %s: %w", tag, err)
	}
	defer res.Body.Close()

	var imageID string
	dec := json.NewDecoder(res.Body)
	for {
		var m struct {
			Stream      string `json:"stream"`
			Status      string `json:"status"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
			Aux struct {
				ID string `json:"ID"`
			} `json:"aux"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", fmt.Errorf("docker build %s: read progress: %w", tag, err)
		}
		switch {
		case m.Error != "" || m.ErrorDetail.Message != "":
			return "", fmt.Errorf("docker build %s: %s", tag, cmp.Or(m.ErrorDetail.Message, m.Error))
		case m.Stream != "":
			_, _ = io.WriteString(progress, m.Stream)
		case m.Status != "":
			_, _ = io.WriteString(progress, m.Status+"\n")
		}
		if m.Aux.ID != "" {
			imageID = m.Aux.ID
		}
	}
	if imageID == "" {
		img, err := cli.ImageInspect(ctx, tag)
		if err != nil {
			return "", fmt.Errorf("docker build %s: built, but cannot inspect the result: %w", tag, err)
		}
		imageID = img.ID
	}
	return imageID, nil
}
