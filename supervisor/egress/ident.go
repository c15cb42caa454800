package egress

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Identity is the process behind a client connection.
//
// It is advisory: it says which executable a process was started from, not which
// code it runs. An interpreter runs any script, a program runs what its plugins and
// hooks say, and a process of the agent's own uid can be written to through
// /proc/PID/mem. Binary rules built on it are a convenience, not a boundary; the
// checks below close the cheap ways to borrow another binary's identity.
type Identity struct {
	PID       int
	Exe       string   // /proc/PID/exe
	Ancestors []string // executables of the parent, grandparent, … up to (excluding) the supervisor or PID 1
	// Taint, parallel to Binaries(), says why that process must not match a binary
	// rule ("" = it may): its environment steers the dynamic loader (LD_PRELOAD,
	// LD_AUDIT, LD_LIBRARY_PATH), so it may run the agent's code under an allowed
	// executable's path.
	Taint []string
}

// Binaries is Exe then Ancestors, the list policy.Request.Binaries wants.
func (id Identity) Binaries() []string {
	if id.Exe == "" {
		return nil
	}
	return append([]string{id.Exe}, id.Ancestors...)
}

// loaderVars make the dynamic loader (glibc's and musl's) load code the executable
// did not ask for.
var loaderVars = []string{"LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH"}

// maxEnviron bounds how much of /proc/PID/environ is read; a larger environment is
// not checked and taints the process.
const maxEnviron = 4 << 20

// LoaderTaint reads a /proc/PID/environ image (NUL-separated KEY=VALUE) and says why
// the process may run foreign code ("" when none of loaderVars is set to a
// non-empty value). The image is the environment the process was started with, as
// it sits in its memory: a preloaded library can overwrite it afterwards, so this
// catches the plain use of these variables, not a determined one.
func LoaderTaint(environ []byte) string {
	if len(environ) >= maxEnviron {
		return "its environment is too large to check for LD_PRELOAD"
	}
	var found []string
	for len(environ) > 0 {
		var kv []byte
		if i := bytes.IndexByte(environ, 0); i >= 0 {
			kv, environ = environ[:i], environ[i+1:]
		} else {
			kv, environ = environ, nil
		}
		k, v, ok := bytes.Cut(kv, []byte("="))
		if !ok || len(v) == 0 {
			continue
		}
		for _, name := range loaderVars {
			if string(k) == name && !slices.Contains(found, name) {
				found = append(found, name)
			}
		}
	}
	if len(found) == 0 {
		return ""
	}
	return "it runs with " + strings.Join(found, " and ") + " set"
}

// processTaint is LoaderTaint of a live process; an environment that cannot be read
// taints it too (fail closed).
func processTaint(proc string, pid int) string {
	f, err := os.Open(filepath.Join(proc, strconv.Itoa(pid), "environ"))
	if err != nil {
		return fmt.Sprintf("its environment cannot be checked for LD_PRELOAD (%v)", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxEnviron))
	if err != nil {
		return fmt.Sprintf("its environment cannot be checked for LD_PRELOAD (%v)", err)
	}
	return LoaderTaint(b)
}

// ErrSharedSocket means more than one process holds the client socket: it was
// passed (SCM_RIGHTS, inheritance, pidfd_getfd), so the connection cannot be
// attributed to one executable. It is checked when a connection is identified
// (its first request): a socket handed over later keeps the identity it had.
var ErrSharedSocket = errors.New("egress: the client socket is held by more than one process")

// Identifier finds the process owning the client end of an accepted connection.
type Identifier interface {
	Identify(c net.Conn) (Identity, error)
}

// ProcIdentifier identifies a TCP client through /proc: the client socket's inode from
// /proc/net/tcp{,6} (matched on the client's local address, which is the accepted
// connection's remote address), the pid holding that inode among /proc/*/fd, then
// /proc/PID/exe and the parents' exes.
type ProcIdentifier struct {
	// Proc is the proc mount ("" = /proc).
	Proc string
	// NetPID, when non-zero, reads the socket tables of that process's network
	// namespace (/proc/NetPID/net/tcp): use any pid inside the agent's namespace when
	// the proxy listens on the host side of a veth. 0 = the proxy's own namespace.
	NetPID int
	// StopPID ends the ancestor walk (excluded); 0 = the proxy's own pid.
	StopPID int
	// InNetNS, when set, runs a function inside the agent's network namespace (pass
	// (*netns.Net).Do): the socket lookup then uses sock_diag there, which is fast,
	// instead of /proc/NetPID/net/tcp.
	InNetNS func(func() error) error
}

var _ Identifier = (*ProcIdentifier)(nil)

// ErrNoOwner means no process holds the client socket any more (it exited).
var ErrNoOwner = errors.New("egress: no process owns the client socket")

// Identify implements Identifier.
func (pi *ProcIdentifier) Identify(c net.Conn) (Identity, error) {
	client, ok1 := c.RemoteAddr().(*net.TCPAddr)
	server, ok2 := c.LocalAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return Identity{}, fmt.Errorf("egress: cannot identify a %s client: only TCP is traced", c.RemoteAddr().Network())
	}
	proc := pi.Proc
	if proc == "" {
		proc = "/proc"
	}
	netDir := filepath.Join(proc, "net")
	if pi.NetPID != 0 {
		netDir = filepath.Join(proc, strconv.Itoa(pi.NetPID), "net")
	}
	ca, sa := client.AddrPort(), server.AddrPort()
	ca = netip.AddrPortFrom(ca.Addr().Unmap(), ca.Port())
	sa = netip.AddrPortFrom(sa.Addr().Unmap(), sa.Port())
	var inode string
	var lastErr error
	if pi.Proc == "" && (pi.NetPID == 0 || pi.InNetNS != nil) {
		lookup := func() error {
			inode, lastErr = diagInode(ca, sa)
			if inode == "" && ca.Addr().Is4() {
				// A dual-stack AF_INET6 client socket shows v4-mapped addresses.
				inode, _ = diagInode(netip.AddrPortFrom(netip.AddrFrom16(ca.Addr().As16()), ca.Port()),
					netip.AddrPortFrom(netip.AddrFrom16(sa.Addr().As16()), sa.Port()))
			}
			return nil
		}
		if pi.InNetNS != nil {
			if err := pi.InNetNS(lookup); err != nil {
				lastErr = err
			}
		} else {
			lookup()
		}
	}
	for _, f := range []string{"tcp", "tcp6"} {
		if inode != "" || (pi.InNetNS != nil && pi.NetPID == 0) {
			break // no /proc table names the agent's namespace without a pid in it
		}
		ino, err := findInode(filepath.Join(netDir, f), ca, sa)
		if err != nil {
			lastErr = err
			continue
		}
		if ino != "" {
			inode = ino
			break
		}
	}
	if inode == "" {
		if lastErr != nil {
			return Identity{}, lastErr
		}
		return Identity{}, fmt.Errorf("%w: no socket %s -> %s in %s/tcp{,6}", ErrNoOwner, ca, sa, netDir)
	}
	link := "socket:[" + inode + "]"
	pids, err := socketHolders(proc, link)
	if err != nil {
		return Identity{}, err
	}
	if len(pids) > 1 {
		return Identity{PID: pids[0]}, fmt.Errorf("%w (pids %s hold %s): a socket handed to another process is not attributed to it; open the connection in the process that uses it",
			ErrSharedSocket, joinInts(pids), link)
	}
	pid := pids[0]
	id := Identity{PID: pid, Taint: []string{processTaint(proc, pid)}}
	id.Exe, err = os.Readlink(filepath.Join(proc, strconv.Itoa(pid), "exe"))
	if err != nil {
		return Identity{}, fmt.Errorf("egress: read exe of pid %d: %w", pid, err)
	}
	id.Exe = strings.TrimSuffix(id.Exe, " (deleted)")
	stop := pi.StopPID
	if stop == 0 {
		stop = os.Getpid()
	}
	cur := pid
	for range 32 {
		ppid, err := parentPID(proc, cur)
		if err != nil || ppid <= 1 || ppid == stop {
			break
		}
		exe, err := os.Readlink(filepath.Join(proc, strconv.Itoa(ppid), "exe"))
		if err != nil {
			break
		}
		id.Ancestors = append(id.Ancestors, strings.TrimSuffix(exe, " (deleted)"))
		id.Taint = append(id.Taint, processTaint(proc, ppid))
		cur = ppid
	}
	return id, nil
}

// findInode scans one /proc/net/tcp table for the socket local=client remote=server.
func findInode(table string, client, server netip.AddrPort) (string, error) {
	f, err := os.Open(table)
	if err != nil {
		return "", fmt.Errorf("egress: open %s: %w", table, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		local, err1 := parseProcAddr(fields[1])
		remote, err2 := parseProcAddr(fields[2])
		if err1 != nil || err2 != nil {
			continue
		}
		if local == client && remote == server && fields[9] != "0" {
			return fields[9], nil
		}
	}
	return "", sc.Err()
}

// parseProcAddr decodes "0100007F:1F90" (IPv4) or the 32-hex-digit IPv6 form; each
// 32-bit word is in host (little-endian) order.
func parseProcAddr(s string) (netip.AddrPort, error) {
	host, port, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, errors.New("no port")
	}
	b, err := hex.DecodeString(host)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, errors.New("bad address")
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

// scanHolders is the portable form of socketHolders (os.ReadDir and os.Readlink);
// Linux uses directory descriptors instead, which is several times faster.
func scanHolders(proc, link string) ([]int, error) {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return nil, fmt.Errorf("egress: list %s: %w", proc, err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join(proc, e.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // exited, or not ours to read
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && l == link {
				pids = append(pids, pid)
				break
			}
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("%w (%s)", ErrNoOwner, link)
	}
	return pids, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

func parentPID(proc string, pid int) (int, error) {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// comm may contain spaces and parens: the fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, errors.New("bad stat")
	}
	return strconv.Atoi(f[1])
}
