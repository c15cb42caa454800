// Package state is the on-disk record of one VM sandbox. The driver and the sandbox's
// runner process share it: a restarted driver re-adopts running VMs from these files
// alone. Every write is atomic (temp file + rename) and serialised with a flock on a
// lock file inside the sandbox directory, so the directory's removal leaves nothing.
package state

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/atomicfile"
	"github.com/openshell/openshell/internal/rundir"
)

// File names inside a sandbox state directory. Short on purpose: Unix socket paths
// are limited to 107 bytes.
const (
	RecordFile    = "state.json"
	LockFile      = "state.lock"
	SpecFile      = "runner.json" // what the runner boots (secrets inside: 0600)
	TombstoneFile = "tombstone.json"
	ControlSocket = "ctl.sock"
	ConsoleLog    = "console.log"
	RunnerLog     = "runner.log"
	DiskFile      = "disk.img"
	VMMDir        = "v" // vmm.Config.StateDir (channel sockets, QMP); short for sun_path
)

// Version is the record format version.
const Version = 1

// Record is state.json.
type Record struct {
	Version     int       `json:"version"`
	SandboxID   string    `json:"sandbox_id"`
	SandboxName string    `json:"sandbox_name"`
	SpecDigest  string    `json:"spec_digest"`
	CreatedAt   time.Time `json:"created_at"`
	// Stopped is the wanted state: true after Stop, false after Start.
	Stopped bool `json:"stopped,omitempty"`
	// Error is set when provisioning failed before a runner existed.
	Error *Tombstone `json:"error,omitempty"`

	Image       string `json:"image,omitempty"`
	ImageDigest string `json:"image_digest,omitempty"`
	CID         uint32 `json:"cid,omitempty"` // guest vsock CID
	VCPUs       int    `json:"vcpus,omitempty"`
	MemoryMiB   int    `json:"memory_mib,omitempty"`

	RunnerPID   int    `json:"runner_pid,omitempty"`
	RunnerStart uint64 `json:"runner_start,omitempty"` // /proc/<pid>/stat starttime (clock ticks since boot)
	// VMMPID/VMMStart identify the VMM process (QEMU, or libkrun's enter process);
	// records of earlier versions call them qemu_pid/qemu_start (read by UnmarshalJSON).
	VMMPID   int    `json:"vmm_pid,omitempty"`
	VMMStart uint64 `json:"vmm_start,omitempty"`
	// BootID is the host's boot id (/proc/sys/kernel/random/boot_id) when the driver
	// last started a runner for the sandbox: a different boot id now means the host
	// restarted since, so the recorded pids name nothing of ours ("" in records written
	// before the field existed: no conclusion is drawn).
	BootID string `json:"boot_id,omitempty"`

	Paths Paths `json:"paths"`
}

// UnmarshalJSON reads records of every version: before the VMM became
// backend-neutral its pid was stored as qemu_pid/qemu_start, and VMs started then
// must still be re-adopted.
func (r *Record) UnmarshalJSON(b []byte) error {
	type plain Record
	var aux struct {
		plain
		LegacyPID   int    `json:"qemu_pid"`
		LegacyStart uint64 `json:"qemu_start"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*r = Record(aux.plain)
	if r.VMMPID == 0 && aux.LegacyPID != 0 {
		r.VMMPID, r.VMMStart = aux.LegacyPID, aux.LegacyStart
	}
	return nil
}

// Paths are the files of one sandbox: inside Dir, its sockets inside RunDir(Dir).
type Paths struct {
	Dir           string `json:"dir"`
	ControlSocket string `json:"control_socket"`
	ConsoleLog    string `json:"console_log"`
	RunnerLog     string `json:"runner_log"`
	Disk          string `json:"disk"`
	Tombstone     string `json:"tombstone"`
	VMMDir        string `json:"vmm_dir"`
}

// PathsFor returns the canonical paths of a sandbox directory. Its sockets (the
// control socket and the VMM's) live in RunDir(dir): under a long state dir their
// paths would not fit sun_path (107 bytes).
func PathsFor(dir string) Paths {
	run := RunDir(dir)
	return Paths{
		Dir:           dir,
		ControlSocket: filepath.Join(run, ControlSocket),
		ConsoleLog:    filepath.Join(dir, ConsoleLog),
		RunnerLog:     filepath.Join(dir, RunnerLog),
		Disk:          filepath.Join(dir, DiskFile),
		Tombstone:     filepath.Join(dir, TombstoneFile),
		VMMDir:        filepath.Join(run, VMMDir),
	}
}

// RunDir is the short runtime directory (0700, per driver state dir) holding a
// sandbox directory's sockets; rundir.Ensure creates it.
func RunDir(dir string) string {
	return filepath.Join(rundir.For(filepath.Dir(dir)), filepath.Base(dir))
}

// Tombstone is what a runner leaves when its VM is gone.
type Tombstone struct {
	// Reason is a condition reason: Stopped (asked for), VMExited (crash or guest
	// power-off), Killed, BootFailed, ProvisioningFailed.
	Reason      string    `json:"reason"`
	Message     string    `json:"message"`
	Time        time.Time `json:"time"`
	ConsoleTail string    `json:"console_tail,omitempty"`
}

var (
	safeID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
)

// ValidID checks a sandbox id: 1-128 characters of letters, digits, '.', '_' or '-'
// (the compute contract's id rule), never "." or "..".
func ValidID(id string) error {
	if !safeID.MatchString(id) || id == "." || id == ".." {
		return fmt.Errorf("sandbox id %q: must be 1-128 characters of letters, digits, '.', '_' or '-'", id)
	}
	return nil
}

// MaxDirName is the length of every sandbox directory name.
const MaxDirName = 16

// DirName is the directory name of a sandbox: a hash of its id (ids may be 128 bytes,
// while the Unix socket paths inside the directory must stay short). state.json inside
// names the id.
func DirName(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:MaxDirName/2])
}

// lock takes an exclusive flock on dir/state.lock. The returned func releases it.
func lock(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock sandbox state %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock sandbox state %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// ErrNoRecord is returned by Load when the directory has no state.json.
var ErrNoRecord = errors.New("no sandbox state record")

// Load reads dir/state.json.
func Load(dir string) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(dir, RecordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNoRecord)
	}
	if err != nil {
		return nil, fmt.Errorf("read sandbox state: %w", err)
	}
	return Decode(b)
}

// Decode parses and checks a state.json document.
func Decode(b []byte) (*Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("sandbox state record: %w", err)
	}
	if r.Version != Version {
		return nil, fmt.Errorf("sandbox state record: version %d, want %d (remove the sandbox directory to discard it)", r.Version, Version)
	}
	if err := ValidID(r.SandboxID); err != nil {
		return nil, fmt.Errorf("sandbox state record: %w", err)
	}
	return &r, nil
}

// Create writes the first record of a new sandbox directory.
func Create(r *Record) error {
	unlock, err := lock(r.Paths.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	r.Version = Version
	return save(r)
}

// Update applies fn to the record under the lock and saves the result.
func Update(dir string, fn func(*Record) error) (*Record, error) {
	unlock, err := lock(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := Load(dir)
	if err != nil {
		return nil, err
	}
	if err := fn(r); err != nil {
		return nil, err
	}
	return r, save(r)
}

func save(r *Record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode sandbox state %s: %w", r.SandboxID, err)
	}
	return atomicfile.WriteFile(filepath.Join(r.Paths.Dir, RecordFile), b, 0o600)
}

// WriteTombstone records why the VM is gone.
func WriteTombstone(dir string, t *Tombstone) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return fmt.Errorf("encode tombstone: %w", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, TombstoneFile), b, 0o600)
}

// ReadTombstone returns the tombstone, or nil when the VM has not ended.
func ReadTombstone(dir string) (*Tombstone, error) {
	b, err := os.ReadFile(filepath.Join(dir, TombstoneFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read tombstone: %w", err)
	}
	var t Tombstone
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("tombstone %s: %w", dir, err)
	}
	return &t, nil
}

// ClearTombstone removes the tombstone before a new boot.
func ClearTombstone(dir string) error {
	err := os.Remove(filepath.Join(dir, TombstoneFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clear tombstone: %w", err)
	}
	return nil
}

// Tail returns at most n bytes from the end of a file, starting at a line boundary
// when possible ("" when the file is missing).
func Tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	k, _ := f.ReadAt(buf, off)
	buf = buf[:k]
	if off > 0 {
		for i, c := range buf {
			if c == '\n' {
				buf = buf[i+1:]
				break
			}
		}
	}
	return string(buf)
}
