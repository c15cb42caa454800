package docker

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/moby/api/types/build"
	"github.com/moby/moby/client"
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
	if tag == "" {
		return "", errors.New("docker build: empty tag: name the image to build (e.g. my-sandbox:latest)")
	}
	st, err := os.Stat(pathOrDockerfile)
	if err != nil {
		return "", fmt.Errorf("docker build: %w; give a directory containing a Dockerfile or a Dockerfile path", err)
	}
	dir, dockerfile := pathOrDockerfile, "Dockerfile"
	if !st.IsDir() {
		dir, dockerfile = filepath.Dir(pathOrDockerfile), filepath.Base(pathOrDockerfile)
	} else if _, err := os.Stat(filepath.Join(dir, dockerfile)); err != nil {
		return "", fmt.Errorf("docker build: %s has no Dockerfile: %w", dir, err)
	}
	ignore, err := readDockerignore(dir)
	if err != nil {
		return "", err
	}

	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarContext(dir, dockerfile, ignore, pw)) }()
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
			return "", fmt.Errorf("docker build %s: %s", tag, firstNonEmpty(m.ErrorDetail.Message, m.Error))
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

// readDockerignore reads the context's .dockerignore: one path.Match pattern per
// line, matched against slash-separated paths relative to the context (a pattern
// matching a directory excludes everything below it). '!' exceptions are not
// supported and rejected rather than silently ignored.
func readDockerignore(dir string) ([]string, error) {
	f, err := os.Open(filepath.Join(dir, ".dockerignore"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("docker build: %w", err)
	}
	defer f.Close()
	var pats []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			return nil, fmt.Errorf("docker build: .dockerignore: exception %q is not supported; list what to exclude instead", line)
		}
		line = path.Clean(strings.TrimPrefix(filepath.ToSlash(line), "/"))
		if _, err := path.Match(line, ""); err != nil {
			return nil, fmt.Errorf("docker build: .dockerignore: bad pattern %q: %w", line, err)
		}
		pats = append(pats, line)
	}
	return pats, sc.Err()
}

func ignored(rel string, pats []string) bool {
	for _, p := range pats {
		for q := rel; q != "." && q != "/"; q = path.Dir(q) {
			if ok, _ := path.Match(p, q); ok {
				return true
			}
		}
	}
	return false
}

// tarContext writes dir as a tar stream (the build context). The Dockerfile and
// .dockerignore are always sent, as the daemon needs them.
func tarContext(dir, dockerfile string, ignore []string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel != dockerfile && rel != ".dockerignore" && ignored(rel, ignore) {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("build context %s: %w", p, err)
		}
		hdr.Name = rel
		if info.IsDir() {
			hdr.Name += "/"
		}
		// Ownership on the build host means nothing inside the image.
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return fmt.Errorf("docker build: pack context %s: %w", dir, err)
	}
	return tw.Close()
}
