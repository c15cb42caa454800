package egress

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Identity is the process behind a client connection.
type Identity struct {
	PID       int
	Exe       string   // /proc/PID/exe
	Ancestors []string // executables of the parent, grandparent, … up to (excluding) the supervisor or PID 1
}

// Binaries is Exe then Ancestors, the list policy.Request.Binaries wants.
func (id Identity) Binaries() []string {
	if id.Exe == "" {
		return nil
	}
	return append([]string{id.Exe}, id.Ancestors...)
}

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

	mu     sync.Mutex
	recent []int // pids that owned recent client sockets: looked at before a full scan
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
	pid, err := pi.owner(proc, "socket:["+inode+"]")
	if err != nil {
		return Identity{}, err
	}
	id := Identity{PID: pid}
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

// owner finds the pid holding link, trying recent owners first: an agent's
// connections come from a handful of processes, and a full /proc scan costs
// milliseconds on a busy machine.
func (pi *ProcIdentifier) owner(proc, link string) (int, error) {
	pi.mu.Lock()
	recent := slices.Clone(pi.recent)
	pi.mu.Unlock()
	for _, pid := range recent {
		if holds(proc, pid, link) {
			return pid, nil
		}
	}
	pid, err := findSocketOwner(proc, link)
	if err != nil {
		return 0, err
	}
	pi.mu.Lock()
	pi.recent = slices.DeleteFunc(pi.recent, func(p int) bool { return p == pid })
	pi.recent = append([]int{pid}, pi.recent...)
	if len(pi.recent) > 8 {
		pi.recent = pi.recent[:8]
	}
	pi.mu.Unlock()
	return pid, nil
}

func holds(proc string, pid int, link string) bool {
	fdDir := filepath.Join(proc, strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && l == link {
			return true
		}
	}
	return false
}

func findSocketOwner(proc, link string) (int, error) {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return 0, fmt.Errorf("egress: list %s: %w", proc, err)
	}
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
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("%w (%s)", ErrNoOwner, link)
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
