//go:build linux && (amd64 || arm64)

package confine

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/supervisor/policy"
)

const nobody = 65534

// probe is what the confined helper reports.
type probe map[string]string

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return unix.ErrnoName(en)
	}
	return err.Error()
}

// TestHelperConfined is the confined child of TestConfine: it applies the spec from
// its environment, then tries what an escaping agent would try.
func TestHelperConfined(t *testing.T) {
	raw := os.Getenv("CONFINE_HELPER_SPEC")
	if raw == "" {
		t.Skip("helper process only")
	}
	s, err := ParseSpec([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Apply(s)
	p := probe{}
	if err != nil {
		p["apply"] = err.Error()
	} else {
		p["apply"] = "ok"
		p["landlock_abi"] = fmt.Sprint(res.LandlockABI)
		dir := os.Getenv("CONFINE_HELPER_DIR")
		p["write_rw"] = errName(os.WriteFile(filepath.Join(dir, "rw", "f"), []byte("x"), 0o644))
		p["write_outside"] = errName(os.WriteFile(filepath.Join(dir, "outside", "f"), []byte("x"), 0o644))
		_, err = os.ReadFile(filepath.Join(dir, "outside", "secret"))
		p["read_outside"] = errName(err)
		_, err = os.ReadFile(filepath.Join(dir, "ro", "data"))
		p["read_ro"] = errName(err)
		p["write_ro"] = errName(os.WriteFile(filepath.Join(dir, "ro", "g"), []byte("x"), 0o644))
		p["ptrace"] = errName(unix.PtraceAttach(os.Getppid()))
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
		p["vsock"] = errName(err)
		unix.Close(fd)
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		p["packet"] = errName(err)
		unix.Close(fd)
		// The high half of the int must not smuggle the family past the filter.
		_, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(unix.AF_VSOCK)|1<<32, unix.SOCK_STREAM, 0)
		p["vsock_highbits"] = errName(errnoOrNil(e))
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		p["inet"] = errName(err)
		unix.Close(fd)
		p["unshare_user"] = errName(unix.Unshare(unix.CLONE_NEWUSER))
		p["unshare_net"] = errName(unix.Unshare(unix.CLONE_NEWNET))
		_, _, e = unix.RawSyscall(unix.SYS_CLONE3, 0, 0, 0)
		p["clone3"] = errName(errnoOrNil(e))
		p["mount"] = errName(unix.Mount("tmpfs", filepath.Join(dir, "rw"), "tmpfs", 0, ""))
		_, err = unix.Fsopen("tmpfs", 0)
		p["fsopen"] = errName(err)
		p["bpf"] = errName(errnoOrNil(rawErr(unix.SYS_BPF)))
		p["perf"] = errName(errnoOrNil(rawErr(unix.SYS_PERF_EVENT_OPEN)))
		p["userfaultfd"] = errName(errnoOrNil(rawErr(unix.SYS_USERFAULTFD)))
		p["kexec"] = errName(errnoOrNil(rawErr(unix.SYS_KEXEC_LOAD)))
		p["finit_module"] = errName(errnoOrNil(rawErr(unix.SYS_FINIT_MODULE)))
		// io_uring: its socket operation is not seen by seccomp, so setup itself must
		// be refused (unconfined, each of these three succeeds or fails otherwise).
		var params [120]byte // struct io_uring_params
		r, _, e := unix.RawSyscall(unix.SYS_IO_URING_SETUP, 8, uintptr(unsafe.Pointer(&params)), 0)
		p["io_uring_setup"] = errName(errnoOrNil(e))
		if e == 0 {
			unix.Close(int(r))
		}
		_, _, e = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, 1<<20, 0, 0, 0, 0, 0)
		p["io_uring_enter"] = errName(errnoOrNil(e)) // EBADF unconfined
		_, _, e = unix.RawSyscall6(unix.SYS_IO_URING_REGISTER, 1<<20, 0, 0, 0, 0, 0)
		p["io_uring_register"] = errName(errnoOrNil(e)) // EBADF unconfined
		// Calls the kernel lets any user make, which the allowlist omits: EPERM here
		// proves the filter, not a missing capability, refused them.
		_, err = unix.KeyctlInt(unix.KEYCTL_GET_KEYRING_ID, unix.KEY_SPEC_SESSION_KEYRING, 0, 0, 0)
		p["keyctl"] = errName(err)
		_, _, e = unix.RawSyscall6(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(os.Getpid()), 0 /* KCMP_FILE */, 0, 0, 0)
		p["kcmp"] = errName(errnoOrNil(e))
		_, _, err = unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
		p["name_to_handle_at"] = errName(err)
		p["add_key"] = errName(errnoOrNil(rawErr(unix.SYS_ADD_KEY)))
		_, err = unix.Klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, nil)
		p["syslog"] = errName(err)
		// A number past the newest syscall the filter's tables know.
		p["future_syscall"] = errName(errnoOrNil(rawErr(uintptr(newestKnownSyscall(hostArch())) + 1)))
		// Everyday calls still work.
		p["getpid"] = fmt.Sprint(unix.Getpid() == os.Getpid())
		var st unix.Statx_t
		p["statx"] = errName(unix.Statx(unix.AT_FDCWD, dir, 0, unix.STATX_BASIC_STATS, &st))
		var rnd [8]byte
		_, err = unix.Getrandom(rnd[:], 0)
		p["getrandom"] = errName(err)
		mfd, err := unix.MemfdCreate("probe", 0)
		p["memfd_create"] = errName(err)
		unix.Close(mfd)
		var pfd [2]int
		p["pipe2"] = errName(unix.Pipe2(pfd[:], unix.O_CLOEXEC))
		unix.Close(pfd[0])
		unix.Close(pfd[1])
		ofd, err := unix.Openat2(unix.AT_FDCWD, filepath.Join(dir, "rw"), &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY})
		p["openat2"] = errName(err)
		unix.Close(ofd)
		p["close_range"] = errName(unix.CloseRange(1<<20, 1<<20+10, 0))
		efd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		p["epoll_create1"] = errName(err)
		unix.Close(efd)
		p["unshare_files"] = errName(unix.Unshare(unix.CLONE_FILES)) // no namespace: allowed
		p["uid"] = fmt.Sprint(os.Getuid(), os.Geteuid())
		p["gid"] = fmt.Sprint(os.Getgid(), os.Getegid())
		groups, _ := os.Getgroups()
		p["groups"] = fmt.Sprint(groups)
		var rl unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_CORE, &rl)
		p["core"] = fmt.Sprint(rl.Cur, rl.Max)
		// Apply left this goroutine on the thread that would exec the agent.
		if b, err := os.ReadFile("/proc/thread-self/status"); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				k, v, ok := strings.Cut(l, ":")
				if ok && (strings.HasPrefix(k, "Cap") || k == "NoNewPrivs" || k == "Seccomp") {
					p[k] = strings.TrimSpace(v)
				}
			}
		} else {
			p["status"] = err.Error()
		}
	}
	json.NewEncoder(os.Stdout).Encode(p)
}

func errnoOrNil(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// rawErr calls a syscall with zero arguments; only the errno matters (EPERM from the
// filter versus EINVAL/EFAULT from the kernel).
func rawErr(nr uintptr) syscall.Errno {
	_, _, e := unix.RawSyscall6(nr, 0, 0, 0, 0, 0, 0)
	return e
}

func setupTree(t *testing.T) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // t.TempDir's parent is 0700: let the sandbox uid through
	for _, d := range []string{"rw", "ro", "outside"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(dir, d), 0o777) // the unix permissions allow everything: only Landlock refuses
	}
	os.WriteFile(filepath.Join(dir, "ro", "data"), []byte("ro"), 0o644)
	os.WriteFile(filepath.Join(dir, "outside", "secret"), []byte("s"), 0o644)
	return dir
}

func runHelper(t *testing.T, s Spec, dir string) probe {
	t.Helper()
	return runProbeHelper(t, "TestHelperConfined", "CONFINE_HELPER_SPEC", s, dir)
}

// runProbeHelper runs the helper test named helper in a child of this test binary,
// with s (in the environment variable specEnv) and dir, and returns the probe it
// prints as a JSON line.
func runProbeHelper(t *testing.T, helper, specEnv string, s Spec, dir string) probe {
	t.Helper()
	exe, _ := os.Executable()
	b, _ := s.Marshal()
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^"+helper+"$", "-test.v")
	cmd.Env = append(os.Environ(), specEnv+"="+string(b), "CONFINE_HELPER_DIR="+dir)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "{") {
			p := probe{}
			if err := json.Unmarshal([]byte(l), &p); err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	t.Fatalf("helper printed no probe:\n%s", out)
	return nil
}

func TestConfine(t *testing.T) {
	testenv.RequireRoot(t)
	dir := setupTree(t)
	exe, _ := os.Executable()
	s := Spec{UID: nobody, GID: nobody, LandlockHard: true,
		ReadOnly:  []string{"/proc", "/usr", "/lib", "/lib64", "/etc", filepath.Dir(exe), filepath.Join(dir, "ro"), "/nonexistent/is/skipped"},
		ReadWrite: []string{filepath.Join(dir, "rw"), "/dev/null"}}
	p := runHelper(t, s, dir)
	want := probe{
		"apply": "ok", "write_rw": "ok", "read_ro": "ok",
		"write_outside": "EACCES", "read_outside": "EACCES", "write_ro": "EACCES",
		"ptrace": "EPERM", "vsock": "EPERM", "packet": "EPERM", "vsock_highbits": "EPERM", "inet": "ok",
		"unshare_user": "EPERM", "unshare_net": "EPERM", "clone3": "ENOSYS",
		"mount": "EPERM", "fsopen": "EPERM", "bpf": "EPERM", "perf": "EPERM", "userfaultfd": "EPERM",
		"kexec": "EPERM", "finit_module": "EPERM",
		"io_uring_setup": "EPERM", "io_uring_enter": "EPERM", "io_uring_register": "EPERM",
		"keyctl": "EPERM", "kcmp": "EPERM", "name_to_handle_at": "EPERM", "add_key": "EPERM", "syslog": "EPERM",
		"future_syscall": "ENOSYS", "getpid": "true", "statx": "ok", "getrandom": "ok", "memfd_create": "ok", "pipe2": "ok", "openat2": "ok",
		"close_range": "ok", "epoll_create1": "ok", "unshare_files": "ok",
		"uid": "65534 65534", "gid": "65534 65534", "groups": "[]", "core": "0 0",
		"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
		"CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
		"NoNewPrivs": "1", "Seccomp": "2",
	}
	for k, v := range want {
		if p[k] != v {
			t.Errorf("%s = %q, want %q", k, p[k], v)
		}
	}
	if p["landlock_abi"] == "0" || p["landlock_abi"] == "" {
		t.Errorf("Landlock not enforced: abi %q", p["landlock_abi"])
	}
}

func TestConfineRefusesRoot(t *testing.T) {
	for _, s := range []Spec{{UID: 0, GID: 1}, {UID: 1, GID: 0}, {UID: 1, GID: 1, Groups: []int{0}}, {UID: 1, GID: 1, ReadOnly: []string{"rel"}}} {
		if err := s.Validate(); err == nil {
			t.Errorf("spec %+v accepted", s)
		}
		if _, err := Apply(s); err == nil {
			t.Errorf("Apply(%+v) succeeded", s)
		}
	}
}

func TestSpecFromPolicy(t *testing.T) {
	p := policy.Default()
	p.Landlock.Compatibility = policy.HardRequirement
	s := SpecFromPolicy(p, 1000, 1000, nil, "/sandbox")
	if !s.LandlockHard || s.ReadWrite[len(s.ReadWrite)-1] != "/sandbox" || len(s.ReadOnly) == 0 {
		t.Fatalf("%+v", s)
	}
	b, _ := s.Marshal()
	s2, err := ParseSpec(b)
	if err != nil || s2.UID != 1000 || len(s2.ReadWrite) != len(s.ReadWrite) {
		t.Fatalf("round trip: %+v %v", s2, err)
	}
}

// TestHelperExecMain plays the supervisor's confine-exec subcommand.
func TestHelperExecMain(t *testing.T) {
	if os.Getenv("CONFINE_EXECMAIN") == "" {
		t.Skip("helper process only")
	}
	args := os.Args
	for i, a := range args {
		if a == Subcommand {
			args = args[i+1:]
			break
		}
	}
	env := []string{"PATH=/usr/bin:/bin", "HOME=/"}
	if os.Getenv("CONFINE_EXECMAIN") == "inherit" {
		env = os.Environ()
	}
	err := ExecMain(args, env)
	fmt.Println("execmain failed:", err)
	os.Exit(126)
}

func TestCommandExecsConfined(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "sh", "apt-get install dash")
	dir := setupTree(t)
	exe, _ := os.Executable()
	s := Spec{UID: nobody, GID: nobody, ReadOnly: []string{"/usr", "/bin", "/lib", "/lib64", "/etc", "/proc"},
		ReadWrite: []string{filepath.Join(dir, "rw"), "/dev/null"}}
	script := fmt.Sprintf(`id -u; grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd|CapPrm):' /proc/self/status; echo hi > %s/rw/ok && echo rw-ok; echo x > %s/outside/f || echo outside-refused`, dir, dir)
	cmd, err := Command(t.Context(), exe, s, []string{"sh", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	// The test binary is not the supervisor: route the subcommand to TestHelperExecMain.
	cmd.Args = append([]string{exe, "-test.run=^TestHelperExecMain$", "--"}, cmd.Args[1:]...)
	cmd.Env = append(os.Environ(), "CONFINE_EXECMAIN=1")
	out, err := cmd.CombinedOutput()
	cmd.ExtraFiles[0].Close()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{"65534\n", "NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "CapPrm:\t0000000000000000", "rw-ok", "outside-refused", "Permission denied"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "outside", "f")); err == nil {
		t.Error("confined agent wrote outside read_write")
	}
}

var _ = net.IPv4len

func TestLandlockMissing(t *testing.T) {
	orig := landlockABI
	t.Cleanup(func() { landlockABI = orig })
	landlockABI = func() (int, error) { return 0, syscall.ENOSYS }
	for _, thread := range []bool{false, true} { // Apply, and a helper's applyForExec
		_, err := applyLandlock(Spec{UID: 1, GID: 1, LandlockHard: true, ReadOnly: []string{"/usr"}}, nil, thread)
		if err == nil || !strings.Contains(err.Error(), "hard_requirement") {
			t.Fatalf("hard_requirement without Landlock (thread %v): %v", thread, err)
		}
		abi, err := applyLandlock(Spec{UID: 1, GID: 1, ReadOnly: []string{"/usr"}}, nil, thread)
		if err != nil || abi != 0 {
			t.Fatalf("best_effort without Landlock must degrade to nothing (thread %v): abi=%d err=%v", thread, abi, err)
		}
	}
	// A spare on such a kernel prepares nothing, and Apply decides as above.
	for _, hard := range []bool{false, true} {
		if pr, err := prepareLandlock(Spec{UID: 1, GID: 1, LandlockHard: hard, ReadOnly: []string{"/usr"}}); pr != nil || err != nil {
			t.Errorf("prepareLandlock without Landlock (hard %v) = %v, %v; want nothing", hard, pr, err)
		}
	}
	// Built in but left out of lsm= (what a guest kernel booted with its own lsm=
	// list would answer): the error names the cause and both fixes.
	landlockABI = func() (int, error) { return 0, syscall.EOPNOTSUPP }
	_, err := CheckLandlock(true)
	for _, want := range []string{"Landlock", "hard_requirement", "not enabled at boot", "lsm=", "best_effort"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckLandlock(hard) error lacks %q: %v", want, err)
		}
	}
	if abi, err := CheckLandlock(false); abi != 0 || err != nil {
		t.Errorf("CheckLandlock(best_effort) = %d, %v; want 0, nil", abi, err)
	}
	landlockABI = func() (int, error) { return 4, nil }
	if abi, err := CheckLandlock(true); abi != 4 || err != nil {
		t.Errorf("CheckLandlock with ABI 4 = %d, %v", abi, err)
	}
}
