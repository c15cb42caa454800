//go:build linux && (amd64 || arm64)

package confine

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/testenv"
)

func hostArch() *arch.Info {
	a, err := archInfo(auditArch)
	if err != nil {
		panic(err)
	}
	return a
}

// seccompData encodes a struct seccomp_data for x/net/bpf's VM, which loads words
// big-endian: each 32-bit word is stored at the offset the kernel's little-endian
// layout gives it, so the program reads the same values the kernel would.
func seccompData(nr, audit uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], audit)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))       // low half first (little-endian u64)
		binary.BigEndian.PutUint32(b[16+8*i+4:], uint32(a>>32)) // high half
	}
	return b
}

// TestFilterEverySyscall runs the filter of each architecture over every syscall its
// table knows (and the edges around them) and checks each verdict against the
// allowlist: the search tree must agree with a plain lookup, number by number.
func TestFilterEverySyscall(t *testing.T) {
	for _, audit := range []uint32{unix.AUDIT_ARCH_X86_64, unix.AUDIT_ARCH_AARCH64} {
		a, _ := archInfo(audit)
		t.Run(a.Name, func(t *testing.T) {
			ins, err := buildFilter(audit)
			if err != nil {
				t.Fatal(err)
			}
			if len(ins) > 400 {
				t.Errorf("filter has %d instructions; expected a compact tree", len(ins))
			}
			vm, err := bpf.NewVM(ins)
			if err != nil {
				t.Fatal(err)
			}
			run := func(nr, au uint32, args ...uint64) uint32 {
				r, err := vm.Run(seccompData(nr, au, args...))
				if err != nil {
					t.Fatal(err)
				}
				return uint32(r)
			}
			allowed := map[uint32]bool{}
			for _, n := range allowedSyscalls {
				if nr, ok := a.SyscallNames[n]; ok {
					allowed[uint32(nr)] = true
				}
			}
			checked := map[string]bool{"socket": true, "clone": true, "clone3": true, "unshare": true}
			newest := newestKnownSyscall(a)
			nAllowed, nRefused := 0, 0
			for nr := uint32(0); nr <= newest+5; nr++ {
				name := a.SyscallNumbers[int(nr)]
				if checked[name] {
					continue
				}
				want := retEPERM
				switch {
				case nr > newest:
					want = retENOSYS
				case allowed[nr]:
					want = retAllow
					nAllowed++
				default:
					nRefused++
				}
				if got := run(nr, audit); got != want {
					t.Errorf("syscall %d (%s): %#x, want %#x", nr, name, got, want)
				}
			}
			t.Logf("%s: %d instructions, %d syscalls allowed, %d refused", a.Name, len(ins), nAllowed, nRefused)
			nr := func(n string) uint32 { return uint32(a.SyscallNames[n]) }
			for _, c := range []struct {
				what string
				nr   uint32
				arch uint32
				args []uint64
				want uint32
			}{
				{"io_uring_setup", nr("io_uring_setup"), audit, nil, retEPERM},
				{"io_uring_enter", nr("io_uring_enter"), audit, nil, retEPERM},
				{"io_uring_register", nr("io_uring_register"), audit, nil, retEPERM},
				{"ptrace", nr("ptrace"), audit, nil, retEPERM},
				{"bpf", nr("bpf"), audit, nil, retEPERM},
				{"keyctl", nr("keyctl"), audit, nil, retEPERM},
				{"kexec_load", nr("kexec_load"), audit, nil, retEPERM},
				{"add_key", nr("add_key"), audit, nil, retEPERM},
				{"syslog", nr("syslog"), audit, nil, retEPERM},
				{"socket inet", nr("socket"), audit, []uint64{unix.AF_INET}, retAllow},
				{"socket unix", nr("socket"), audit, []uint64{unix.AF_UNIX}, retAllow},
				{"socket vsock", nr("socket"), audit, []uint64{unix.AF_VSOCK}, retEPERM},
				{"socket vsock high bits", nr("socket"), audit, []uint64{unix.AF_VSOCK | 1<<32}, retEPERM},
				{"socket packet", nr("socket"), audit, []uint64{unix.AF_PACKET}, retEPERM},
				{"clone thread", nr("clone"), audit, []uint64{unix.CLONE_VM | unix.CLONE_THREAD}, retAllow},
				{"clone newuser", nr("clone"), audit, []uint64{unix.CLONE_NEWUSER | uint64(unix.SIGCHLD)}, retEPERM},
				{"unshare files", nr("unshare"), audit, []uint64{unix.CLONE_FILES}, retAllow},
				{"unshare newuser", nr("unshare"), audit, []uint64{unix.CLONE_NEWUSER}, retEPERM},
				{"clone3", nr("clone3"), audit, nil, retENOSYS},
				{"getpid", nr("getpid"), audit, nil, retAllow},
				{"foreign arch", nr("getpid"), unix.AUDIT_ARCH_I386, nil, retKill},
				{"max number", 0xffffffff, audit, nil, map[uint32]uint32{unix.AUDIT_ARCH_X86_64: retKill, unix.AUDIT_ARCH_AARCH64: retENOSYS}[audit]},
			} {
				if got := run(c.nr, c.arch, c.args...); got != c.want {
					t.Errorf("%s: %#x, want %#x", c.what, got, c.want)
				}
			}
			if audit == unix.AUDIT_ARCH_X86_64 {
				if got := run(0x40000000|uint32(a.SyscallNames["getpid"]), audit); got != retKill {
					t.Errorf("x32 getpid: %#x, want kill", got)
				}
			}
		})
	}
}

// TestAllowlistNames: every allowlisted name exists on at least one architecture
// (a typo would silently refuse a call), and what agents cannot do without is there.
func TestAllowlistNames(t *testing.T) {
	for _, n := range allowedSyscalls {
		if _, ok := arch.X86_64.SyscallNames[n]; ok {
			continue
		}
		if _, ok := arch.AARCH64.SyscallNames[n]; !ok {
			t.Errorf("allowlisted %q is a syscall on neither amd64 nor arm64", n)
		}
	}
	for _, a := range []*arch.Info{arch.X86_64, arch.AARCH64} {
		for _, n := range []string{"execve", "openat", "read", "write", "mmap", "futex", "rseq", "statx", "faccessat2", "clone", "socket", "wait4", "pipe2", "getrandom"} {
			if _, ok := a.SyscallNames[n]; !ok {
				t.Errorf("%s lacks %s", a.Name, n)
			}
		}
	}
	dup := map[string]bool{}
	for _, n := range allowedSyscalls {
		if dup[n] {
			t.Errorf("%q listed twice", n)
		}
		dup[n] = true
	}
}

// TestProbesWorkUnconfined is the control for TestConfine: the calls it expects the
// filter to refuse succeed without it, so EPERM there is the filter's doing.
func TestProbesWorkUnconfined(t *testing.T) {
	if _, err := unix.KeyctlInt(unix.KEYCTL_GET_KEYRING_ID, unix.KEY_SPEC_SESSION_KEYRING, 0, 0, 0); err != nil {
		t.Errorf("keyctl: %v", err)
	}
	if _, _, e := unix.RawSyscall6(unix.SYS_KCMP, uintptr(os.Getpid()), uintptr(os.Getpid()), 0, 0, 0, 0); e != 0 {
		t.Errorf("kcmp: %v", e)
	}
	if _, _, err := unix.NameToHandleAt(unix.AT_FDCWD, t.TempDir(), 0); err != nil {
		t.Errorf("name_to_handle_at: %v", err)
	}
	var params [120]byte
	r, _, e := unix.RawSyscall(unix.SYS_IO_URING_SETUP, 8, uintptr(unsafe.Pointer(&params)), 0)
	if b, _ := os.ReadFile("/proc/sys/kernel/io_uring_disabled"); e != 0 && strings.TrimSpace(string(b)) == "0" {
		t.Errorf("io_uring_setup: %v", e)
	} else if e == 0 {
		unix.Close(int(r))
	}
}

// TestRealProgramsConfined runs the tools agents use under the confinement (the
// allowlist, Landlock, no capabilities, the nobody uid): an over-tight allowlist
// shows up here as a failing program.
func TestRealProgramsConfined(t *testing.T) {
	testenv.RequireRoot(t)
	exe, _ := os.Executable()
	dir := setupTree(t)
	rw := filepath.Join(dir, "rw")
	// A forward proxy stand-in: curl sends it the absolute URL.
	var proxied []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied = append(proxied, r.URL.String())
		fmt.Fprintln(w, "via-proxy")
	}))
	defer srv.Close()
	ro := []string{"/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/dev/urandom", "/dev/random", "/dev/zero", "/sys/devices/system/cpu", filepath.Dir(exe)}
	s := Spec{UID: nobody, GID: nobody, LandlockHard: true, ReadOnly: ro, ReadWrite: []string{rw, "/dev/null"}}
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + rw, "TMPDIR=" + rw, "LANG=C",
		"GIT_AUTHOR_NAME=a", "GIT_AUTHOR_EMAIL=a@x", "GIT_COMMITTER_NAME=a", "GIT_COMMITTER_EMAIL=a@x",
		"npm_config_cache=" + rw + "/npm", "npm_config_update_notifier=false"}
	cases := []struct {
		name, need, script, want string
	}{
		{"bash and coreutils", "bash", `set -e; cd "$HOME"; mkdir -p d/e; echo hello > d/e/f; cp d/e/f g; sort g | uniq | wc -l; ls -la d >/dev/null; find . -name f | head -1; sleep 0.1 & wait; echo done`, "1\n./d/e/f\ndone"},
		{"git init and commit", "git", `set -e; cd "$HOME"; git init -q repo; cd repo; echo x > a; git add a; git commit -qm one; git log --oneline | wc -l; git status --short | wc -l`, "1\n0"},
		{"python", "python3", `/usr/bin/python3 -c 'import os, subprocess, threading, tempfile, hashlib; t=threading.Thread(target=lambda: None); t.start(); t.join(); print(subprocess.run(["echo","sub"],capture_output=True,text=True).stdout.strip(), hashlib.sha256(b"x").hexdigest()[:8], len(tempfile.mkdtemp()) > 0)'`, "sub 2d711642 True"},
		{"pip", "python3", `/usr/bin/python3 -m pip --version | cut -c1-4`, "pip"},
		{"node", "node", `node -e 'const fs=require("fs"); const p=process.env.HOME+"/n.txt"; fs.writeFileSync(p,"abc"); fs.promises.readFile(p,"utf8").then(s=>{ require("child_process").exec("echo child",(e,o)=>console.log(s, o.trim(), e===null)); })'`, "abc child true"},
		{"npm", "npm", `npm --version >/dev/null && echo npm-ok`, "npm-ok"},
		{"cc and make", "gcc", `set -e; cd "$HOME"; printf '#include <stdio.h>\nint main(void){puts("built");return 0;}\n' > m.c; printf 'm: m.c\n\tcc -O0 -o m m.c\n' > Makefile; make -s; ./m`, "built"},
		{"tar and xz", "xz", `set -e; cd "$HOME"; mkdir -p t; seq 1 1000 > t/n; tar -cJf t.tar.xz t; rm -r t; tar -xJf t.tar.xz; wc -l < t/n`, "1000"},
		{"curl through a proxy", "curl", `curl -sS --max-time 10 -x ` + srv.URL + ` http://example.invalid/path`, "via-proxy"},
		{"dev fds and id", "id", `id -u; echo x > /dev/null && echo null-ok`, "65534\nnull-ok"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := exec.LookPath(c.need); err != nil {
				testenv.Require(t, false, c.need+" is not installed")
			}
			cmd, err := Command(t.Context(), exe, s, []string{"bash", "-c", c.script})
			if err != nil {
				t.Fatal(err)
			}
			cmd.Args = append([]string{exe, "-test.run=^TestHelperExecMain$", "--"}, cmd.Args[1:]...)
			cmd.Env = append(slices.Clone(env), "CONFINE_EXECMAIN=inherit")
			cmd.Dir = rw
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			cmd.ExtraFiles[0].Close()
			got := strings.TrimSpace(strings.TrimPrefix(string(out), "PASS\n"))
			if err != nil || got != c.want {
				t.Fatalf("%s: err %v\nstdout %q, want %q\nstderr:\n%s", c.name, err, got, c.want, stderr.String())
			}
		})
	}
	if len(proxied) != 1 || proxied[0] != "http://example.invalid/path" {
		t.Errorf("the proxy saw %q", proxied)
	}
}

// TestHelperNoLandlockKernel plays a kernel that has Landlock built in but not
// enabled (lsm= without it, which is how a guest kernel could boot): a filter makes
// landlock_create_ruleset answer EOPNOTSUPP, as that kernel does, then Apply runs.
func TestHelperNoLandlockKernel(t *testing.T) {
	raw := os.Getenv("CONFINE_NOLANDLOCK_SPEC")
	if raw == "" {
		t.Skip("helper process only")
	}
	s, err := ParseSpec([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	ins := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offNr, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_LANDLOCK_CREATE_RULESET, SkipFalse: 1},
		bpf.RetConstant{Val: uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EOPNOTSUPP))},
		bpf.RetConstant{Val: retAllow},
	}
	prog, err := assemble(ins)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		t.Fatal(e)
	}
	res, err := Apply(s)
	p := probe{"apply": errName(err), "landlock_abi": fmt.Sprint(res.LandlockABI)}
	if err == nil {
		p["write_outside"] = errName(os.WriteFile(filepath.Join(os.Getenv("CONFINE_HELPER_DIR"), "outside", "f"), []byte("x"), 0o644))
	}
	fmt.Printf("%s\n", must(json.Marshal(p)))
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestLandlockNotEnabled: on a kernel that does not enforce Landlock,
// hard_requirement refuses to confine (naming Landlock, the cause and the fixes) and
// best_effort confines without it, reporting ABI 0.
func TestLandlockNotEnabled(t *testing.T) {
	testenv.RequireRoot(t)
	dir := setupTree(t)
	exe, _ := os.Executable()
	run := func(hard bool) probe {
		s := Spec{UID: nobody, GID: nobody, LandlockHard: hard,
			ReadOnly: []string{"/usr", "/lib", "/etc", filepath.Dir(exe)}, ReadWrite: []string{filepath.Join(dir, "rw")}}
		return runProbeHelper(t, "TestHelperNoLandlockKernel", "CONFINE_NOLANDLOCK_SPEC", s, dir)
	}
	p := run(true)
	for _, want := range []string{"Landlock is required", "hard_requirement", "EOPNOTSUPP", "lsm=", "best_effort"} {
		if !strings.Contains(p["apply"], want) {
			t.Errorf("hard_requirement on a kernel without Landlock: apply = %q, lacks %q", p["apply"], want)
		}
	}
	p = run(false)
	if p["apply"] != "ok" || p["landlock_abi"] != "0" || p["write_outside"] != "ok" {
		t.Errorf("best_effort on a kernel without Landlock: %v (want apply ok, landlock_abi 0, the write outside not refused)", p)
	}
}
