package podman

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/drivers/buildctx"
)

// BuildImage builds an image from a directory (with a Dockerfile in it) or from a
// Dockerfile path (its directory is the build context) and tags it tag, with the
// Podman service at socket ("" = DefaultSocket). The build's output is streamed to
// progress (may be nil). It returns the image id.
func BuildImage(ctx context.Context, socket, pathOrDockerfile, tag string, progress io.Writer) (string, error) {
	if socket == "" {
		socket = DefaultSocket()
	}
	c := newClient(socket)
	defer c.close()
	return buildImage(ctx, c, pathOrDockerfile, tag, progress)
}

// BuildImage is BuildImage against the driver's service.
func (d *Driver) BuildImage(ctx context.Context, pathOrDockerfile, tag string, progress io.Writer) (string, error) {
	return buildImage(ctx, d.cli, pathOrDockerfile, tag, progress)
}

func buildImage(ctx context.Context, c *client, pathOrDockerfile, tag string, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	pr, dockerfile, err := buildctx.Open("podman build", pathOrDockerfile, tag)
	if err != nil {
		return "", err
	}
	defer pr.Close()

	q := url.Values{"t": {tag}, "dockerfile": {dockerfile}, "rm": {"true"}, "forcerm": {"true"}}
	// A rootful build's RUN steps otherwise ask for open-files and process limits of
	// 1M, which a service whose own hard limits are lower cannot grant ("error setting
	// rlimit"); ask for this process's hard limits, the usual limits of the host's
	// services.
	var ulimits []string
	for _, l := range []struct {
		name string
		res  int
	}{{"nofile", unix.RLIMIT_NOFILE}, {"nproc", unix.RLIMIT_NPROC}} {
		var r unix.Rlimit
		if unix.Getrlimit(l.res, &r) == nil && r.Max > 0 && r.Max < 1<<20 {
			ulimits = append(ulimits, fmt.Sprintf("%s=%d:%d", l.name, r.Max, r.Max))
		}
	}
	if len(ulimits) > 0 {
		raw, _ := json.Marshal(ulimits)
		q.Set("ulimits", string(raw))
	}

	resp, err := c.do(ctx, c.stream, http.MethodPost, apiPrefix+"/build", q, io.Reader(pr), "podman build "+tag)
	if err != nil {
		if isServiceDown(err) {
			return "", fmt.Errorf("podman build %s: the Podman service at %s does not answer: %w; start it with scripts/setup-podman.sh (or podman system service)", tag, c.socket, err)
		}
		return "", fmt.Errorf("podman build %s: %w", tag, err)
	}
	defer resp.Body.Close()
	if err := buildProgress(resp.Body, progress); err != nil {
		return "", fmt.Errorf("podman build %s: %w", tag, err)
	}
	img, err := c.imageInspect(ctx, tag)
	if err != nil {
		return "", fmt.Errorf("podman build %s: built, but cannot inspect the result: %w", tag, err)
	}
	return img.ID, nil
}

// buildProgress copies a build's JSON progress stream to w and returns the build's
// error, if it reports one.
func buildProgress(r io.Reader, w io.Writer) error {
	dec := json.NewDecoder(r)
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("read progress: %w", err)
		}
		if msg := cmp.Or(m.ErrorDetail.Message, m.Error); msg != "" {
			return errors.New(msg)
		}
		if m.Stream != "" {
			_, _ = io.WriteString(w, m.Stream)
		}
	}
}
