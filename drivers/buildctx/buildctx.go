// Package buildctx packs an image build context (a directory, minus what its
// .dockerignore excludes) as the tar stream the container engines' build APIs take.
// The Docker and Podman drivers share it.
package buildctx

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ReadIgnore reads the context's .dockerignore: one path.Match pattern per
// line, matched against slash-separated paths relative to the context (a pattern
// matching a directory excludes everything below it). '!' exceptions are not
// supported and rejected rather than silently ignored.
func ReadIgnore(dir string) ([]string, error) {
	f, err := os.Open(filepath.Join(dir, ".dockerignore"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
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
			return nil, fmt.Errorf("build: .dockerignore: exception %q is not supported; list what to exclude instead", line)
		}
		line = path.Clean(strings.TrimPrefix(filepath.ToSlash(line), "/"))
		if _, err := path.Match(line, ""); err != nil {
			return nil, fmt.Errorf("build: .dockerignore: bad pattern %q: %w", line, err)
		}
		pats = append(pats, line)
	}
	return pats, sc.Err()
}

// Ignored reports whether rel (slash-separated, relative to the context) is excluded
// by one of the patterns.
func Ignored(rel string, pats []string) bool {
	for _, p := range pats {
		for q := rel; q != "." && q != "/"; q = path.Dir(q) {
			if ok, _ := path.Match(p, q); ok {
				return true
			}
		}
	}
	return false
}

// Tar writes dir as a tar stream (the build context). The Dockerfile and
// .dockerignore are always sent, as the daemon needs them.
func Tar(dir, dockerfile string, ignore []string, w io.Writer) error {
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
		if rel != dockerfile && rel != ".dockerignore" && Ignored(rel, ignore) {
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
		return fmt.Errorf("build: pack context %s: %w", dir, err)
	}
	return tw.Close()
}

// Open checks a build request and streams its context: pathOrDockerfile is a
// directory holding a Dockerfile or a Dockerfile's path (its directory is then the
// context). dockerfile is the Dockerfile's name inside the context; the caller
// closes the stream. Errors start with what (e.g. "docker build").
func Open(what, pathOrDockerfile, tag string) (r io.ReadCloser, dockerfile string, err error) {
	if tag == "" {
		return nil, "", fmt.Errorf("%s: empty tag: name the image to build (e.g. my-sandbox:latest)", what)
	}
	st, err := os.Stat(pathOrDockerfile)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w; give a directory containing a Dockerfile or a Dockerfile path", what, err)
	}
	dir, dockerfile := pathOrDockerfile, "Dockerfile"
	if !st.IsDir() {
		dir, dockerfile = filepath.Dir(pathOrDockerfile), filepath.Base(pathOrDockerfile)
	} else if _, err := os.Stat(filepath.Join(dir, dockerfile)); err != nil {
		return nil, "", fmt.Errorf("%s: %s has no Dockerfile: %w", what, dir, err)
	}
	ignore, err := ReadIgnore(dir)
	if err != nil {
		return nil, "", err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(Tar(dir, dockerfile, ignore, pw)) }()
	return pr, dockerfile, nil
}
