//go:build linux && (amd64 || arm64)

package confine

// A spare is a confinement helper started before anyone asks for a command:
// `self confine-exec --wait 3` pays the start of the supervisor binary (its runtime
// and package initialisation: ~0.3 s in a guest under software emulation, most of
// an exec's time) ahead of need, then waits, still root and unconfined, on a
// socket for exactly one command. The request carries the spec, argv, environment,
// working directory and terminal flag, and the command's stdio as file descriptors
// (SCM_RIGHTS). From there the spare does what a freshly started helper does, in
// the same order: it becomes the command's process (stdio, directory, controlling
// terminal, as fork would have), answers "ok", then Apply, LookPath and exec. Only
// the hand-over differs; the confinement is the same code.
//
// A spare started with the spec of the previous command (SpareCommand's spec) also
// builds that spec's Landlock ruleset while it waits, as it assembles its seccomp
// filter. The request's spec stays the one enforced: a ruleset built for another
// spec (the policy changed) is dropped and the request's is built as a one-shot
// helper builds it.
//
// Nothing of a spare is reachable by the agent: the supervisor's end of the socket
// is close-on-exec (no child inherits it), the spare's end is inherited by the
// spare alone and closed before it execs, the spare is root (the agent's uid may not
// signal, trace or look into it), and its environment is empty.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// WaitFlag makes the helper a spare: `confine-exec --wait FD`.
const WaitFlag = "--wait"

// maxRequest bounds a request (argv and environment, as JSON): a few times the
// kernel's usual argument limit.
const maxRequest = 8 << 20

// ErrSpareGone means the spare ended before it took the command: nothing of the
// command ran, so the caller may start it another way.
var ErrSpareGone = errors.New("confine: the spare helper ended before it took the command")

// errNotHandable: a command whose process attributes a spare cannot reproduce.
var errNotHandable = errors.New("confine: command needs process attributes a spare cannot give it")

// request is what the supervisor hands a spare.
type request struct {
	Spec Spec     `json:"spec"`
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
	Dir  string   `json:"dir,omitempty"`
	// Ctty makes the new stdin the controlling terminal (a PTY program).
	Ctty bool `json:"ctty,omitempty"`
	// Stdio says which of stdin, stdout, stderr ride along as descriptors, in that
	// order; the others stay /dev/null, as exec.Cmd leaves a nil stream.
	Stdio [3]bool `json:"stdio"`
}

func (r *request) validate(nfds int) error {
	if err := r.Spec.Validate(); err != nil {
		return err
	}
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return errors.New("confine: spare request: argv is empty")
	}
	want := 0
	for _, b := range r.Stdio {
		if b {
			want++
		}
	}
	if nfds != want {
		return fmt.Errorf("confine: spare request: %d descriptors for %d stdio streams", nfds, want)
	}
	return nil
}

// decodeRequest reads one request: a 4-byte big-endian length, then that much
// JSON. The descriptors came with the first bytes.
func decodeRequest(r io.Reader) (*request, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, fmt.Errorf("confine: spare request length: %w", err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > maxRequest {
		return nil, fmt.Errorf("confine: spare request of %d bytes (want 1..%d)", size, maxRequest)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("confine: spare request body: %w", err)
	}
	var req request
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("confine: bad spare request: %w", err)
	}
	return &req, nil
}

// encodeRequest is decodeRequest's input: the length and the body.
func encodeRequest(req *request) (head, body []byte, err error) {
	body, err = json.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	if len(body) > maxRequest {
		return nil, nil, fmt.Errorf("confine: command and environment take %d bytes as a request (more than %d)", len(body), maxRequest)
	}
	return binary.BigEndian.AppendUint32(nil, uint32(len(body))), body, nil
}

// Spare is the supervisor's end of one spare helper.
type Spare struct {
	conn  *net.UnixConn
	child *os.File // the spare's end until Started
	specR *os.File // the spare's spec pipe until Started (nil: none)
}

// SpecFlag names the descriptor a spare reads the spec to prepare from:
// `confine-exec --wait 3 --spec 4`.
const SpecFlag = "--spec"

// SpareCommand builds `self confine-exec --wait 3` with an empty environment, / as
// its directory and its own session. With spec, the spare prepares that spec's
// Landlock ruleset while it waits (the spec travels on a pipe inherited as fd 4).
// The caller may add to SysProcAttr, starts it (in the sandbox's network
// namespace, under its reaper), then calls Started.
func SpareCommand(self string, spec *Spec) (*exec.Cmd, *Spare, error) {
	var specR *os.File
	if spec != nil {
		var err error
		if specR, err = specPipe(*spec); err != nil {
			return nil, nil, err
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("confine: spare socket: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "spare")
	c, err := net.FileConn(mine) // a close-on-exec duplicate
	mine.Close()
	if err != nil {
		unix.Close(fds[1])
		if specR != nil {
			specR.Close()
		}
		return nil, nil, fmt.Errorf("confine: spare socket: %w", err)
	}
	child := os.NewFile(uintptr(fds[1]), "spare-child")
	cmd := exec.Command(self, Subcommand, WaitFlag, "3")
	cmd.Env = []string{}
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{child}
	if specR != nil {
		cmd.Args = append(cmd.Args, SpecFlag, "4")
		cmd.ExtraFiles = append(cmd.ExtraFiles, specR)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd, &Spare{conn: c.(*net.UnixConn), child: child, specR: specR}, nil
}

// maxPreparedSpec bounds the spec a spare reads to prepare.
const maxPreparedSpec = 1 << 20

// specPipe returns the read end of a pipe holding s, for a spare to prepare from.
// The whole spec is written before the spare starts, so it must fit in the pipe's
// buffer (64 KiB by default; a write beyond it would wait for a reader that is not
// there yet): a spec that does not fit returns nil, and that spare prepares
// nothing (the request's spec is built and enforced as a one-shot helper does).
func specPipe(s Spec) (*os.File, error) {
	b, err := s.Marshal()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("confine: spare spec pipe: %w", err)
	}
	defer w.Close()
	size, err := unix.FcntlInt(w.Fd(), unix.F_GETPIPE_SZ, 0)
	if err == nil && (len(b) > size || len(b) > maxPreparedSpec) {
		r.Close()
		return nil, nil
	}
	if err == nil {
		_, err = w.Write(b)
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("confine: write the spare's spec: %w", err)
	}
	return r, nil
}

// Started closes the spare's end in this process (call it once the spare was
// started, or was not).
func (s *Spare) Started() {
	if s.child != nil {
		s.child.Close()
		s.child = nil
	}
	if s.specR != nil {
		s.specR.Close()
		s.specR = nil
	}
}

// Close lets an unused spare go: it exits when its socket ends.
func (s *Spare) Close() error {
	s.Started()
	return s.conn.Close()
}

// requestOf turns a command prepared for a one-shot helper (Path, Args, Env, Dir,
// stdio, SysProcAttr with Setsid and maybe Setctty) into a request and its
// descriptors. A command that needs more than a spare gives is errNotHandable.
func requestOf(spec Spec, cmd *exec.Cmd) (*request, []int, error) {
	sp := cmd.SysProcAttr
	if sp == nil || !sp.Setsid || (sp.Setctty && sp.Ctty != 0) || sp.Setpgid || sp.Noctty || sp.Foreground ||
		sp.Pdeathsig != 0 || sp.Cloneflags != 0 || sp.Unshareflags != 0 || sp.Chroot != "" || sp.Ptrace ||
		len(sp.AmbientCaps) > 0 || sp.UseCgroupFD || len(cmd.ExtraFiles) > 0 || len(cmd.Args) == 0 {
		return nil, nil, errNotHandable
	}
	req := &request{Spec: spec, Argv: cmd.Args, Env: cmd.Environ(), Dir: cmd.Dir, Ctty: sp.Setctty}
	var fds []int
	for i, s := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		switch f := s.(type) {
		case nil:
		case *os.File:
			req.Stdio[i] = true
			fds = append(fds, int(f.Fd()))
		default:
			return nil, nil, errNotHandable
		}
	}
	if req.Ctty && !req.Stdio[0] {
		return nil, nil, errNotHandable
	}
	return req, fds, nil
}

// Hand gives the spare cmd's program to run confined by spec, and waits until the
// spare has taken it (stdio, directory and terminal in place), at most timeout. An
// error wrapping ErrSpareGone means nothing ran and the spare is gone. Any other
// error is the command's (a missing directory, say) or a spare that did not answer
// in time; the caller must then make sure the spare's process ends. The Spare is
// spent either way: Close it.
func (s *Spare) Hand(spec Spec, cmd *exec.Cmd, timeout time.Duration) error {
	req, fds, err := requestOf(spec, cmd)
	if err != nil {
		return err
	}
	head, body, err := encodeRequest(req)
	if err != nil {
		return err
	}
	_ = s.conn.SetDeadline(time.Now().Add(timeout))
	// The descriptors travel with the length, the body after them.
	if _, _, err := s.conn.WriteMsgUnix(head, unix.UnixRights(fds...), nil); err != nil {
		return fmt.Errorf("%w: %w", ErrSpareGone, err)
	}
	if _, err := s.conn.Write(body); err != nil {
		return fmt.Errorf("%w: %w", ErrSpareGone, err)
	}
	line, err := readLine(s.conn, 4096)
	switch {
	case err == nil && line == "ok":
		return nil
	case err == nil:
		return errors.New(line)
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("%w: %w", ErrSpareGone, err)
	}
	return fmt.Errorf("confine: the spare helper did not take the command: %w", err)
}

// readLine reads up to '\n' (not included), byte by byte: nothing after the line
// may be consumed.
func readLine(r io.Reader, max int) (string, error) {
	var b []byte
	var c [1]byte
	for len(b) < max {
		if _, err := r.Read(c[:]); err != nil {
			if errors.Is(err, io.EOF) && len(b) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if c[0] == '\n' {
			return string(b), nil
		}
		b = append(b, c[0])
	}
	return "", errors.New("confine: the spare helper's answer is too long")
}

// waitMain is the body of `confine-exec --wait FD`: the spare. It returns only on
// failure (the caller exits 126 without running anything); the error is also on
// the command's stderr when it got that far.
func waitMain(args []string) error {
	if len(args) != 2 && (len(args) != 4 || args[2] != SpecFlag) {
		return fmt.Errorf("confine: usage: %s %s FD [%s FD]", Subcommand, WaitFlag, SpecFlag)
	}
	fd, err := strconv.Atoi(args[1])
	if err != nil || fd < 3 {
		return fmt.Errorf("confine: %s %q: want an inherited socket ≥ 3", WaitFlag, args[1])
	}
	var prepared Spec
	var hasPrepared bool
	if len(args) == 4 {
		sfd, err := strconv.Atoi(args[3])
		if err != nil || sfd < 3 || sfd == fd {
			return fmt.Errorf("confine: %s %q: want an inherited pipe ≥ 3, not the socket", SpecFlag, args[3])
		}
		f := os.NewFile(uintptr(sfd), "spare-spec")
		b, err := io.ReadAll(io.LimitReader(f, maxPreparedSpec))
		f.Close()
		if err != nil {
			return fmt.Errorf("confine: read the spec to prepare from fd %d: %w", sfd, err)
		}
		// A spec that does not parse prepares nothing; the request's spec decides.
		if prepared, err = ParseSpec(b); err == nil {
			hasPrepared = true
		}
	}
	f := os.NewFile(uintptr(fd), "spare")
	c, err := net.FileConn(f) // a close-on-exec duplicate: the agent never inherits it
	f.Close()
	if err != nil {
		return fmt.Errorf("confine: spare socket: %w", err)
	}
	conn, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return fmt.Errorf("confine: spare fd %d is not a Unix socket", fd)
	}
	defer conn.Close()
	// This goroutine's thread is the one that will exec the command (Apply locks it
	// too): lock it now, so that what is prepared for it below stays with it.
	runtime.LockOSThread()
	// What does not depend on the command is done while nobody waits: the filter is
	// the same for every command, and the exec thread's bounding set only ever
	// shrinks (the spare keeps its effective capabilities for what it must still do
	// as root). Apply does both again and finds them done; a failure here is Apply's
	// to report.
	// The ruleset of the spec the supervisor expects to hand over comes first (the
	// bounding set's drop below then also tells that it is built). A failure leaves
	// the work to Apply, which reports it.
	var pr *preparedRuleset
	if hasPrepared {
		pr, _ = prepareLandlock(prepared)
	}
	defer pr.close()
	_, _ = seccompProgram()
	if last, err := lastCapability(); err == nil {
		_ = dropThreadBoundingSet(last)
	}

	req, err := receive(conn)
	if err != nil {
		fmt.Fprintf(conn, "%s\n", oneLine(err))
		return err
	}
	if req.Ctty {
		// As fork does for Setctty: the spare leads its own session (Setsid), and
		// the PTY's slave is now its stdin.
		if err := unix.IoctlSetInt(0, unix.TIOCSCTTY, 1); err != nil {
			err = fmt.Errorf("confine: set the controlling terminal: %w", err)
			fmt.Fprintf(conn, "%s\n", oneLine(err))
			return err
		}
	}
	if req.Dir != "" {
		if err := os.Chdir(req.Dir); err != nil {
			err = fmt.Errorf("chdir %s: %w", req.Dir, errors.Unwrap(err))
			fmt.Fprintf(conn, "%s\n", oneLine(err))
			return err
		}
	}
	if _, err := io.WriteString(conn, "ok\n"); err != nil {
		return fmt.Errorf("confine: answer the supervisor: %w", err)
	}
	conn.Close()
	if !pr.matches(req.Spec) {
		pr.close() // the policy changed since this spare started: build afresh
	}
	return execPrepared(req.Spec, pr, req.Argv, req.Env)
}

// receive reads the request and puts its stdio in place as fds 0-2.
func receive(conn *net.UnixConn) (*request, error) {
	head := make([]byte, 4)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(head, oob) // MSG_CMSG_CLOEXEC: the fds arrive close-on-exec
	if err != nil {
		return nil, fmt.Errorf("confine: spare request: %w", err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("confine: spare request descriptors: %w", err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err != nil {
				return nil, fmt.Errorf("confine: spare request descriptors: %w", err)
			}
			fds = append(fds, got...)
		}
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	req, err := decodeRequest(io.MultiReader(bytes.NewReader(head[:n]), conn))
	if err == nil {
		err = req.validate(len(fds))
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	i := 0
	for std, present := range req.Stdio {
		if !present {
			continue
		}
		// dup3 without O_CLOEXEC: the command inherits fds 0-2 and nothing else.
		if err := unix.Dup3(fds[i], std, 0); err != nil {
			closeAll()
			return nil, fmt.Errorf("confine: spare stdio %d: %w", std, err)
		}
		i++
	}
	closeAll()
	return req, nil
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// Spares keeps spare helpers started ahead of need (one, or Keep) for a launcher
// whose processes are P (the supervisor's reaper processes).
type Spares[P any] struct {
	// Self is the supervisor binary.
	Self string
	// Start starts a spare's command the way the caller starts the agent's
	// programs (network namespace, reaper).
	Start func(*exec.Cmd) (P, error)
	// Kill ends a spare that did not answer.
	Kill func(P)
	// Timeout bounds a hand-over (the spare may still be starting); 0 = 30 s.
	Timeout time.Duration
	// Keep is how many idle spares Fill keeps (0 = 1); SetKeep changes it later.
	Keep int

	mu      sync.Mutex
	idle    []*held[P] // oldest first
	filling bool
	closed  bool
	spec    *Spec // the last command's: what the next spare prepares for
}

type held[P any] struct {
	proc  P
	spare *Spare
}

// Run starts cmd's program confined by spec on an idle spare, if there is one. ok
// false = there was none (or it was gone): start the program the one-shot way.
// Either way the spares are filled again for the next program.
func (s *Spares[P]) Run(spec Spec, cmd *exec.Cmd) (p P, ok bool, err error) {
	if _, _, err := requestOf(spec, cmd); err != nil || spec.Validate() != nil {
		return p, false, nil // the one-shot path starts it, or refuses the spec
	}
	s.mu.Lock()
	var h *held[P]
	if len(s.idle) > 0 {
		h = s.idle[0]
		s.idle = s.idle[1:]
	}
	// The next spare prepares for this spec: a sandbox's programs share one.
	s.spec = &spec
	s.mu.Unlock()
	defer s.Fill()
	if h == nil {
		return p, false, nil
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	err = h.spare.Hand(spec, cmd, timeout)
	h.spare.Close()
	switch {
	case errors.Is(err, ErrSpareGone):
		return p, false, nil
	case err != nil:
		s.Kill(h.proc)
		return p, true, err
	}
	return h.proc, true, nil
}

// SetKeep changes how many idle spares Fill keeps from now on (spares already idle
// stay).
func (s *Spares[P]) SetKeep(n int) {
	s.mu.Lock()
	s.Keep = n
	s.mu.Unlock()
}

// wantLocked says whether another spare should be started.
func (s *Spares[P]) wantLocked() bool {
	return !s.closed && len(s.idle) < max(s.Keep, 1)
}

// Fill starts spares in the background, one after the other, until Keep are idle,
// unless they are there or on their way.
func (s *Spares[P]) Fill() {
	s.mu.Lock()
	if !s.wantLocked() || s.filling {
		s.mu.Unlock()
		return
	}
	s.filling = true
	s.mu.Unlock()
	go s.fill()
}

func (s *Spares[P]) fill() {
	s.mu.Lock()
	defer func() {
		s.filling = false
		s.mu.Unlock()
	}()
	for s.wantLocked() {
		spec := s.spec
		s.mu.Unlock()
		h, err := s.startOne(spec)
		s.mu.Lock()
		switch {
		case err != nil:
			// The next Run tries again (and starts its program the one-shot way).
			return
		case s.closed:
			h.spare.Close()
			return
		}
		s.idle = append(s.idle, h)
	}
}

func (s *Spares[P]) startOne(spec *Spec) (*held[P], error) {
	cmd, sp, err := SpareCommand(s.Self, spec)
	if err != nil {
		return nil, err
	}
	p, err := s.Start(cmd)
	sp.Started()
	if err != nil {
		sp.Close()
		return nil, err
	}
	return &held[P]{proc: p, spare: sp}, nil
}

// Close lets the idle spares go (each exits when its socket ends) and starts no more.
func (s *Spares[P]) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, h := range s.idle {
		h.spare.Close()
	}
	s.idle = nil
}
