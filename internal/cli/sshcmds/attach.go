package sshcmds

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// LoginShell is the interactive shell a sandbox offers: a login bash when the image
// has one, else a login sh (busybox, alpine, distroless with a shell).
var LoginShell = []string{"/bin/sh", "-c", "[ -x /bin/bash ] && exec /bin/bash -l; exec /bin/sh -l"}

// Shell runs an interactive login shell in sandbox name, on the caller's terminal
// when in is one (raw mode, window size followed), and returns its exit code.
func Shell(ctx context.Context, dial DialFunc, name string, in io.Reader, out io.Writer) (int, error) {
	api, closeFn, err := connect(ctx, dial)
	if err != nil {
		return 0, err
	}
	defer closeFn()
	id, err := resolve(ctx, api, name)
	if err != nil {
		return 0, err
	}
	env := map[string]string{}
	if t := os.Getenv("TERM"); t != "" && !strings.ContainsAny(t, "\x00'\"") {
		env["TERM"] = t
	}
	return runInteractive(ctx, api, &pb.ExecSandboxRequest{SandboxId: id, Command: LoginShell, Tty: true, Environment: env}, in, out)
}

// ParseUpload splits a --upload value PATH[:DEST]. The local path must exist; a
// missing DEST is the sandbox user's working directory.
func ParseUpload(spec string) (src, dst string, err error) {
	src, dst = spec, ""
	if _, statErr := os.Stat(spec); statErr != nil {
		if i := strings.LastIndexByte(spec, ':'); i > 0 {
			src, dst = spec[:i], spec[i+1:]
		}
	}
	if src == "" {
		return "", "", fmt.Errorf("--upload %q: the local path is empty; write PATH or PATH:DEST", spec)
	}
	if _, err := os.Stat(src); err != nil {
		return "", "", fmt.Errorf("--upload %q: %w; write an existing local PATH, optionally :DEST in the sandbox", spec, err)
	}
	return src, dst, nil
}

// UploadTo copies local src to dst in sandbox name (as `sandbox upload` does).
func UploadTo(ctx context.Context, dial DialFunc, name, src, dst string, stderr io.Writer) error {
	api, closeFn, err := connect(ctx, dial)
	if err != nil {
		return err
	}
	defer closeFn()
	id, err := resolve(ctx, api, name)
	if err != nil {
		return err
	}
	_, err = Upload(ctx, api, id, src, dst, Options{}, stderr)
	return err
}
