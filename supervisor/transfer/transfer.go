// Package transfer moves files into and out of a sandbox as one tar stream. The CLI
// asks the gateway for a relay whose target is the transfer service (no SSH on the
// way, relay.go frames it); the supervisor serves it as the sandbox user (confined as
// the agent is), so files it creates belong to that user and land only where the
// agent itself could write. Extraction goes through os.Root, so no
// entry (a "../" name, an absolute name, a hard link or a write through a symlink)
// can reach outside the target directory, whatever the string checks miss.
package transfer

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ServerArg makes the supervisor binary serve one transfer on stdin/stdout
// (re-executed as the sandbox user); the next argument is the writable list as JSON.
const ServerArg = "tar-server"

// EnvRequest is the environment variable that hands the re-executed server its
// Request as JSON.
const EnvRequest = "OPENSHELL_TAR_REQUEST"

// EnvFramed tells the re-executed server that its stdin and stdout are the relay
// itself (a bulk stream's socket) rather than pipes from the supervisor: it reads
// the client's frames and writes data frames itself, and the supervisor, which
// keeps the socket, sends the exit frame once it has exited. A guest then moves each
// byte between the socket and the file once, with no pipe and no supervisor copy in
// between.
const EnvFramed = "OPENSHELL_TAR_FRAMED"

// Ops of a Request.
const (
	OpUpload   = "upload"
	OpDownload = "download"
)

// Request says what one transfer does.
type Request struct {
	Op string `json:"op"`
	// Path in the sandbox: the destination of an upload (an existing directory
	// receives the tree under its own name; otherwise the tree is created with this
	// name) or the source of a download. Relative to the working directory.
	Path string `json:"path"`
}

// ParseRequest decodes and checks a Request.
func ParseRequest(s string) (Request, error) {
	var r Request
	if s == "" {
		return r, fmt.Errorf("transfer: %s is not set: the supervisor passes the request to the tar server in it", EnvRequest)
	}
	if err := json.Unmarshal([]byte(s), &r); err != nil {
		return r, fmt.Errorf("transfer: %s: %w", EnvRequest, err)
	}
	switch {
	case r.Op != OpUpload && r.Op != OpDownload:
		return r, fmt.Errorf("transfer: request op %q: use %q or %q", r.Op, OpUpload, OpDownload)
	case r.Path == "":
		return r, errors.New("transfer: request path is empty: name a path in the sandbox")
	case strings.ContainsRune(r.Path, 0):
		return r, errors.New("transfer: request path contains a NUL byte")
	}
	return r, nil
}

// Result is what an upload reports when it is done (one JSON line on stdout).
type Result struct {
	Path     string `json:"path"` // where the tree landed
	Files    int    `json:"files"`
	Dirs     int    `json:"dirs"`
	Symlinks int    `json:"symlinks"`
	Links    int    `json:"hardlinks,omitempty"`
	Bytes    int64  `json:"bytes"`
}

// Header is what a download sends before its tar stream (one JSON line).
type Header struct {
	Bytes int64 `json:"bytes"` // total size of the regular files, for progress
}

// CheckWritable reports whether the resolved path p lies inside one of writable (the
// policy's filesystem read_write list, as the agent's Landlock rules use it). A nil
// list means no policy restriction (the sandbox is not confined).
func CheckWritable(p string, writable []string) error {
	if writable == nil {
		return nil
	}
	for _, w := range writable {
		if w == "" {
			continue
		}
		if rw, err := filepath.EvalSymlinks(w); err == nil {
			w = rw
		}
		w = filepath.Clean(w)
		if p == w || strings.HasPrefix(p, strings.TrimSuffix(w, "/")+"/") {
			return nil
		}
	}
	return fmt.Errorf("%s is not writable for the agent: the policy's filesystem.read_write allows only %s; upload below one of those or add the path to read_write",
		p, strings.Join(writable, ", "))
}
