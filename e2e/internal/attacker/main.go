// Command attacker is run by the end-to-end tests as the agent, inside a sandbox. It
// tries the ways out of the sandbox an agent would try, with raw syscalls, and prints
// one JSON object: attempt → "ok" or the errno's name (or a note when an attempt
// could not be made). It is built static (CGO_ENABLED=0) so any image can run it.
//
//	attacker [-token PATH]... [-write-denied PATH] [-write-allowed PATH]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/guest/channel"
)

// Ports of the host end of the VM channel (guest/channel); the guest dials CID 2.
const (
	hostCID       = 2
	portGateway   = 1024
	portBootstrap = 1025
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func name(err error) string {
	if err == nil {
		return "ok"
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		if n := unix.ErrnoName(en); n != "" {
			return n
		}
	}
	return err.Error()
}

func errno(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func main() {
	var tokens list
	flag.Var(&tokens, "token", "a token file the agent must not read (repeatable)")
	writeDenied := flag.String("write-denied", "", "a path outside the policy's read_write the agent must not create")
	writeAllowed := flag.String("write-allowed", "", "a path inside read_write the agent may create (control)")
	flag.Parse()

	r := map[string]string{}
	r["uid"] = strconv.Itoa(os.Getuid())

	// io_uring: setup must be refused; were it allowed, IORING_OP_SOCKET would create
	// an AF_VSOCK socket that the seccomp socket filter never sees.
	ring, err := ioUringSetup()
	r["io_uring_setup"] = name(err)
	if err != nil {
		r["io_uring_socket_vsock"] = "not attempted: io_uring_setup " + name(err)
	} else {
		r["io_uring_socket_vsock"] = ring.socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
		ring.close()
	}
	_, _, e := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, 1<<20, 0, 0, 0, 0, 0)
	r["io_uring_enter"] = name(errno(e))
	_, _, e = unix.RawSyscall6(unix.SYS_IO_URING_REGISTER, 1<<20, 0, 0, 0, 0, 0)
	r["io_uring_register"] = name(errno(e))

	// vsock: a socket of the family, then the runner's ports on the host.
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	r["socket_vsock"] = name(err)
	if err == nil {
		unix.Close(fd)
	}
	_, _, e = unix.RawSyscall(unix.SYS_SOCKET, uintptr(unix.AF_VSOCK)|1<<32, unix.SOCK_STREAM, 0)
	r["socket_vsock_highbits"] = name(errno(e))
	r["vsock_connect_bootstrap"] = vsockConnect(portBootstrap)
	r["vsock_connect_gateway"] = vsockConnect(portGateway)

	// The supervisor: ptrace, its memory, its environment.
	pid, comm := findSupervisor()
	r["supervisor_pid"] = strconv.Itoa(pid)
	r["supervisor_comm"] = comm
	if pid > 0 {
		err := unix.PtraceAttach(pid)
		r["ptrace_attach_supervisor"] = name(err)
		if err == nil {
			release(pid)
		}
		_, _, e = unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_SEIZE, uintptr(pid), 0, 0, 0, 0)
		r["ptrace_seize_supervisor"] = name(errno(e))
		if e == 0 {
			unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_INTERRUPT, uintptr(pid), 0, 0, 0, 0)
			release(pid)
		}
		buf := make([]byte, 64)
		_, err = unix.ProcessVMReadv(pid, []unix.Iovec{{Base: &buf[0], Len: 64}}, []unix.RemoteIovec{{Base: 0x400000, Len: 64}}, 0)
		r["process_vm_readv_supervisor"] = name(err)
		_, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		r["read_supervisor_environ"] = name(err)
		f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
		r["open_supervisor_mem"] = name(err)
		if err == nil {
			f.Close()
		}
	}

	// The spare confinement helper the supervisor keeps waiting (root, its command
	// not yet given): were it reachable, it would run anything with a spec of the
	// caller's choosing.
	spareProbe(r)

	// The channel's virtio-serial port (VMs on that transport): the supervisor's
	// line to its runner's ports. The supervisor closes and reopens it whenever the
	// host end goes (a suspend, a restore); an agent that could open it in such a
	// moment would speak to the runner in the supervisor's place.
	serialPortProbe(r)

	// Token files.
	for i, p := range tokens {
		_, err := os.ReadFile(p)
		r["read_token_"+strconv.Itoa(i)] = name(err)
	}

	// Landlock: what the kernel offers, and whether it is enforced on this process.
	abi, _, e := unix.RawSyscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if e != 0 {
		r["landlock_abi"] = name(e)
	} else {
		r["landlock_abi"] = strconv.Itoa(int(abi))
	}
	if b, err := os.ReadFile("/sys/kernel/security/lsm"); err == nil {
		r["lsm"] = strings.TrimSpace(string(b))
	} else {
		r["lsm"] = name(err)
	}
	if *writeDenied != "" {
		r["write_denied"] = name(os.WriteFile(*writeDenied, []byte("x"), 0o644))
	}
	if *writeAllowed != "" {
		r["write_allowed"] = name(os.WriteFile(*writeAllowed, []byte("x"), 0o644))
		os.Remove(*writeAllowed)
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && (k == "Seccomp" || k == "NoNewPrivs" || k == "CapEff") {
				r[k] = strings.TrimSpace(v)
			}
		}
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}

// spareProbe finds the supervisor's waiting spare helper (its command line has
// "confine-exec --wait"; a new one starts behind the one that ran this program, so
// it is waited for) and tries to signal, trace and look into it; then counts this
// process's own sockets (none came along from a spare).
func spareProbe(r map[string]string) {
	spare := 0
	for deadline := time.Now().Add(20 * time.Second); spare == 0 && time.Now().Before(deadline); {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err == nil && strings.Contains(string(b), "confine-exec\x00--wait\x00") {
				spare = pid
				break
			}
		}
		if spare == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	r["spare_found"] = strconv.FormatBool(spare != 0)
	if spare != 0 {
		if st, err := os.Stat(fmt.Sprintf("/proc/%d", spare)); err == nil {
			r["spare_uid"] = strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Uid))
		}
		r["spare_kill"] = name(unix.Kill(spare, 0))
		r["spare_sigstop"] = name(unix.Kill(spare, unix.SIGSTOP))
		err := unix.PtraceAttach(spare)
		r["spare_ptrace"] = name(err)
		if err == nil {
			release(spare)
		}
		_, err = os.ReadDir(fmt.Sprintf("/proc/%d/fd", spare))
		r["spare_list_fds"] = name(err)
		f, err := os.Open(fmt.Sprintf("/proc/%d/fd/3", spare))
		r["spare_open_socket"] = name(err)
		if err == nil {
			f.Close()
		}
		if pfd, err := unix.PidfdOpen(spare, 0); err == nil {
			fd, err := unix.PidfdGetfd(pfd, 3, 0)
			r["spare_pidfd_getfd"] = name(err)
			if err == nil {
				unix.Close(fd)
			}
			unix.Close(pfd)
		} else {
			r["spare_pidfd_getfd"] = "pidfd_open " + name(err)
		}
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	sockets := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			sockets++
		}
	}
	r["own_sockets"] = strconv.Itoa(sockets)
}

// release lets a process this program managed to trace go again: wait for its
// ptrace stop, then detach.
func release(pid int) {
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, unix.WALL, nil)
	unix.PtraceDetach(pid)
}

func vsockConnect(port uint32) string {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return name(err)
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, &unix.SockaddrVM{CID: hostCID, Port: port})
	if err == nil {
		return "ok: connected"
	}
	return name(err)
}

// findSupervisor is the root-owned process running the supervisor binary: PID 1 in
// a VM (the same binary is /init) and in a container (the driver's entrypoint).
func findSupervisor() (int, string) {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, n)
		}
	}
	sort.Ints(pids)
	for _, pid := range pids {
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(cmd) == 0 {
			continue
		}
		argv0 := string(cmd[:max(0, strings.IndexByte(string(cmd), 0))])
		if argv0 == "" {
			argv0 = string(cmd)
		}
		base := filepath.Base(argv0)
		if strings.Contains(base, "openshell-sandbox") || (pid == 1 && (base == "init" || base == "exe")) {
			if st, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				if s, ok := st.Sys().(*syscall.Stat_t); ok && s.Uid == 0 {
					return pid, base
				}
			}
		}
	}
	return 1, "pid 1 (no supervisor found by name)"
}

// A minimal io_uring (enough for one IORING_OP_SOCKET), used only if setup works.
type uring struct {
	fd                    int
	sq, cq, sqes          []byte
	sqHead, sqTail, sqArr uint32
	sqMask, cqHead        uint32
	cqTail, cqMask, cqes  uint32
}

const (
	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000
	ioringOpSocket  = 45
	ioringEnterWait = 1
)

func ioUringSetup() (*uring, error) {
	var p [120]byte // struct io_uring_params
	fd, _, e := unix.RawSyscall(unix.SYS_IO_URING_SETUP, 4, uintptr(unsafe.Pointer(&p[0])), 0)
	if e != 0 {
		return nil, e
	}
	u32 := func(off int) uint32 { return *(*uint32)(unsafe.Pointer(&p[off])) }
	u := &uring{fd: int(fd)}
	sqEntries, cqEntries := u32(0), u32(4)
	// io_sqring_offsets at 40, io_cqring_offsets at 80.
	u.sqHead, u.sqTail, u.sqMask, u.sqArr = u32(40), u32(44), u32(48), u32(64)
	u.cqHead, u.cqTail, u.cqMask, u.cqes = u32(80), u32(84), u32(88), u32(100)
	var err error
	if u.sq, err = unix.Mmap(u.fd, ioringOffSQRing, int(u.sqArr+sqEntries*4), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		u.close()
		return nil, err
	}
	if u.cq, err = unix.Mmap(u.fd, ioringOffCQRing, int(u.cqes+cqEntries*16), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		u.close()
		return nil, err
	}
	if u.sqes, err = unix.Mmap(u.fd, ioringOffSQEs, int(sqEntries*64), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		u.close()
		return nil, err
	}
	return u, nil
}

func (u *uring) word(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }

// socket submits IORING_OP_SOCKET and reports its result: "ok: fd N" means the
// kernel created the socket behind seccomp's back.
func (u *uring) socket(domain, typ, proto int) string {
	tail := atomic.LoadUint32(u.word(u.sq, u.sqTail))
	mask := *u.word(u.sq, u.sqMask)
	idx := tail & mask
	sqe := u.sqes[idx*64 : idx*64+64]
	clear(sqe)
	sqe[0] = ioringOpSocket
	*(*int32)(unsafe.Pointer(&sqe[4])) = int32(domain) // fd: domain
	*(*uint64)(unsafe.Pointer(&sqe[8])) = uint64(typ)  // off: type
	*(*uint32)(unsafe.Pointer(&sqe[24])) = uint32(proto)
	*(*uint64)(unsafe.Pointer(&sqe[32])) = 0x5eed // user_data
	*u.word(u.sq, u.sqArr+idx*4) = idx
	atomic.StoreUint32(u.word(u.sq, u.sqTail), tail+1)
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), 1, 1, ioringEnterWait, 0, 0)
	if e != 0 {
		return "io_uring_enter " + name(e)
	}
	head := atomic.LoadUint32(u.word(u.cq, u.cqHead))
	if head == atomic.LoadUint32(u.word(u.cq, u.cqTail)) {
		return "no completion"
	}
	cqe := u.cq[u.cqes+(head&*u.word(u.cq, u.cqMask))*16:]
	res := *(*int32)(unsafe.Pointer(&cqe[8]))
	atomic.StoreUint32(u.word(u.cq, u.cqHead), head+1)
	if res < 0 {
		return name(syscall.Errno(-res))
	}
	unix.Close(int(res))
	return fmt.Sprintf("ok: fd %d", res)
}

func (u *uring) close() {
	for _, m := range [][]byte{u.sq, u.cq, u.sqes} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	unix.Close(u.fd)
}

// serialPortProbe finds the channel's port by its name in sysfs (or, where the
// policy hides sysfs, among the device names virtio-serial gives) and opens it for
// reading and writing. serial_port is the device or "none"; open_serial_port the
// result (EBUSY would mean its mode let the agent in while the supervisor held it).
func serialPortProbe(r map[string]string) {
	// By its sysfs name, as the supervisor finds it; where the policy hides sysfs,
	// by guessing the device names.
	dev, _ := channel.SerialPort()
	for i := 0; dev == "" && i < 4; i++ {
		for j := 0; j < 4; j++ {
			p := fmt.Sprintf("/dev/vport%dp%d", i, j)
			if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
				dev = p
				break
			}
		}
	}
	if dev == "" {
		r["serial_port"] = "none"
		r["open_serial_port"] = "not attempted: no port"
		return
	}
	r["serial_port"] = dev
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	r["open_serial_port"] = name(err)
	if err == nil {
		unix.Close(fd)
	}
}
