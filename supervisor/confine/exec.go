package confine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/openshell/openshell/internal/defaultpath"
)

// Subcommand is the supervisor subcommand that runs ExecMain.
const Subcommand = "confine-exec"

// Command builds `self confine-exec --spec 3 -- argv…` with the spec written into a
// pipe inherited as fd 3. The caller sets Env, Dir, stdio and SysProcAttr (Setsid,
// Setctty for a PTY) as for the agent itself, then Starts it. self is the supervisor
// binary (os.Executable(), or /proc/self/exe). After Start (or if it is never
// started) the caller closes cmd.ExtraFiles[0], the parent's copy of the pipe.
func Command(ctx context.Context, self string, s Spec, argv []string) (*exec.Cmd, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("confine: empty agent command")
	}
	b, err := s.Marshal()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("confine: spec pipe: %w", err)
	}
	// A spec is a few hundred bytes; the pipe buffer holds it, so this never blocks.
	_, err = w.Write(b)
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("confine: write spec: %w", err)
	}
	cmd := exec.CommandContext(ctx, self, append([]string{Subcommand, "--spec", "3", "--"}, argv...)...)
	cmd.ExtraFiles = []*os.File{r}
	return cmd, nil
}

// ExecMain is the body of `confine-exec`: args are what follows the subcommand
// (`--spec FD -- argv…`), env the agent's environment. It reads the spec, applies it
// and execs the agent; it only returns on failure, and the caller must then exit
// non-zero (126 by convention) without running anything. `--wait FD` makes it a
// spare that waits for its command first (see SpareCommand).
func ExecMain(args, env []string) error {
	if len(args) > 0 && args[0] == WaitFlag {
		return waitMain(args)
	}
	if len(args) < 4 || args[0] != "--spec" || args[2] != "--" {
		return fmt.Errorf("confine: usage: %s --spec FD -- COMMAND [ARG…] (or %s FD)", Subcommand, WaitFlag)
	}
	fd, err := strconv.Atoi(args[1])
	if err != nil || fd < 3 {
		return fmt.Errorf("confine: --spec %q: want an inherited file descriptor ≥ 3", args[1])
	}
	argv := args[3:]
	f := os.NewFile(uintptr(fd), "spec")
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	f.Close()
	if err != nil {
		return fmt.Errorf("confine: read spec from fd %d: %w", fd, err)
	}
	s, err := ParseSpec(b)
	if err != nil {
		return err
	}
	return execConfined(s, argv, env)
}

// execConfined applies s and execs argv with env; it returns only on failure.
func execConfined(s Spec, argv, env []string) error {
	return execPrepared(s, nil, argv, env)
}

// execPrepared is execConfined with a Landlock ruleset built ahead (see
// applyForExec).
func execPrepared(s Spec, pr *preparedRuleset, argv, env []string) error {
	if _, err := applyForExec(s, pr); err != nil {
		return err
	}
	// Look the command up after confinement: what the agent cannot reach, it cannot run.
	path, err := LookPath(argv[0], env)
	if err != nil {
		return fmt.Errorf("confine: %w (or not readable under the filesystem policy)", err)
	}
	if err := syscall.Exec(path, argv, env); err != nil {
		return fmt.Errorf("confine: exec %s: %w", path, err)
	}
	return nil
}

// LookPath resolves name against the PATH in env (the child's PATH, not the
// supervisor's), the way execvp would; an executable must be a regular file with an
// execute bit. It is shared by every place that starts an agent program.
func LookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	pathEnv := defaultpath.PATH
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %q", name, pathEnv)
}
