package vm_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/internal/rundir"
	"github.com/openshell/openshell/internal/testenv"
	"github.com/openshell/openshell/internal/testenv/vmhost"
	"github.com/openshell/openshell/supervisor/credentials"
)

// baseImage is the project's Debian image (curl inside), built by
// scripts/build-base-image.sh.
const baseImageDir = "/var/lib/openshell/images/base"

// secretsPolicy allows the host's HTTPS test server by name (localhost, resolved on
// the host by the runner) and nothing else.
const secretsPolicy = `version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /bin, /sbin, /lib, /lib64, /etc, /proc, /sys, /dev/urandom, /dev/zero, /dev/random]
  read_write: [/tmp, /dev/null, /dev/tty, /dev/pts, /dev/ptmx, /dev/shm]
landlock:
  compatibility: best_effort
network_policies:
  api:
    endpoints:
      - host: localhost
        port: %d
`

// authServer is an HTTPS server on the host's loopback with a certificate for
// localhost from a private CA; it records every Authorization header and answers
// "ok" without echoing anything.
type authServer struct {
	port   int
	caFile string
	mu     sync.Mutex
	auth   []string
}

func startAuthServer(t *testing.T, dir string) *authServer {
	t.Helper()
	ca, err := credentials.NewCA("e2e-upstream")
	if err != nil {
		t.Fatal(err)
	}
	s := &authServer{caFile: filepath.Join(dir, "upstream-ca.pem")}
	if err := os.WriteFile(s.caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{TLSConfig: ca.TLSConfig(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		s.mu.Unlock()
		if r.URL.Path == "/echo" { // a server that reflects the credential back
			w.Header().Set("X-Echo", r.Header.Get("Authorization"))
			fmt.Fprintf(w, "upstream-echo %s\n", r.Header.Get("Authorization"))
			return
		}
		io.WriteString(w, "upstream-ok\n")
	})}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *authServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auth...)
}

// TestVMSecretsNeverInGuest attaches a provider to a VM sandbox (real binaries, QEMU
// under TCG, the Debian base image). curl, run as the agent through the proxy, sends
// the placeholder in Authorization to the bound host and the host's HTTPS server
// receives the real secret; an endpoint that echoes it back reaches the guest
// masked. Then the whole guest memory is dumped through QMP
// (dump-guest-memory) and both guest disks are read byte for byte on the host: the
// secret, and its base64 forms, occur zero times, while the placeholder (in guest
// memory) and a marker file written in the guest (on the writable disk) are found,
// so the scans are shown to see what is there.
func TestVMSecretsNeverInGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary and boots a VM")
	}
	vmhost.Require(t)
	_, ierr := os.Stat(filepath.Join(baseImageDir, "index.json"))
	testenv.Require(t, ierr == nil, "the base image (curl) is missing: run scripts/build-base-image.sh")

	var rb [16]byte
	rand.Read(rb[:])
	secret := "sk-e2e-" + hex.EncodeToString(rb[:])
	var mb [8]byte
	rand.Read(mb[:])
	marker := "disk-marker-" + hex.EncodeToString(mb[:])

	e := newEnv(t)
	up := startAuthServer(t, e.tmp)
	port := freePort(t)
	cfg := filepath.Join(e.tmp, "gateway.toml")
	// The test server listens on the host's loopback, which the runner's static guard
	// refuses unless allowed; its certificate comes from a CA only the runner trusts.
	os.WriteFile(cfg, fmt.Appendf(nil, "[drivers.vm]\ncpus = 1\nmemory_mib = 512\negress_allow_private = true\negress_ca_file = %q\n", up.caFile), 0o600)
	e.cli("gateway", "start", "--drivers", "vm", "--port", strconv.Itoa(port), "--state-dir", e.gwState, "--config", cfg)
	t.Cleanup(func() {
		e.cliMayFail("gateway", "stop")
		e.killLeftovers()
	})
	e.cli("provider", "create", "--name", "api", "--type", "generic", "--credential", "API_TOKEN="+secret, "--host", "localhost")

	polFile := filepath.Join(e.tmp, "policy.yaml")
	if err := os.WriteFile(polFile, fmt.Appendf(nil, secretsPolicy, up.port), 0o644); err != nil {
		t.Fatal(err)
	}
	const box = "e2e-vm-secrets"
	t0 := time.Now()
	e.cli("sandbox", "create", "--name", box, "--from", "oci-layout:"+baseImageDir+":latest", "--policy", polFile,
		"--provider", "api", "--timeout", cliTimeout.String(), "--", "sleep", "1000000")
	t.Logf("create → Ready took %v", time.Since(t0))
	t.Cleanup(func() { e.cliMayFail("sandbox", "delete", box) })
	sh := func(script string) (string, error) {
		out, err := e.run("sandbox", "exec", "-n", box, "--", "sh", "-c", script)
		t.Logf("$ %s\n%s", script, out)
		return out, err
	}

	var placeholder string
	t.Run("agent holds a placeholder", func(t *testing.T) {
		out, err := sh(`printf '%s\n' "$API_TOKEN"`)
		placeholder = strings.TrimSpace(out)
		if err != nil || !strings.HasPrefix(placeholder, credentials.PlaceholderPrefix+"api:API_TOKEN:") {
			t.Fatalf("API_TOKEN in the sandbox = %q (%v), want a placeholder", out, err)
		}
	})
	t.Run("request reaches the server with the real secret", func(t *testing.T) {
		// NO_PROXY names localhost; the bound host is reached through the proxy.
		out, err := sh(fmt.Sprintf(`NO_PROXY= no_proxy= curl -sS --max-time 120 -H "Authorization: Bearer $API_TOKEN" https://localhost:%d/v1/models`, up.port))
		if err != nil || !strings.Contains(out, "upstream-ok") {
			e.dumpLogs()
			t.Fatalf("curl through the proxy: %v\n%s", err, out)
		}
		got := up.seen()
		if len(got) == 0 || got[len(got)-1] != "Bearer "+secret {
			t.Fatalf("the server saw Authorization %q, want the real secret", got)
		}
		if strings.Contains(out, secret) {
			t.Fatal("the answer in the guest holds the secret")
		}
	})
	t.Run("a server echoing the secret gets it masked", func(t *testing.T) {
		out, err := sh(fmt.Sprintf(`NO_PROXY= no_proxy= curl -sS -i --max-time 120 -H "Authorization: Bearer $API_TOKEN" https://localhost:%d/echo`, up.port))
		mask := "Bearer " + strings.Repeat("*", len(secret))
		if err != nil || !strings.Contains(out, "upstream-echo "+mask) || strings.Contains(out, secret) {
			t.Fatalf("echo through the proxy: %v\n%s", err, out)
		}
		if got := up.seen(); got[len(got)-1] != "Bearer "+secret {
			t.Fatalf("the echo server saw %q", got[len(got)-1])
		}
	})
	// A control secret, put into the guest on purpose (in RAM on /dev/shm, and base64
	// of "user:control" as a Basic credential would carry it): the scans must find it,
	// in both forms, or they could not have found the real one either.
	rand.Read(mb[:])
	control := "sk-control-" + hex.EncodeToString(mb[:]) + hex.EncodeToString(rb[:4])
	if _, err := sh(fmt.Sprintf("echo %s > /sandbox/marker.txt && sync && printf %%s %s > /dev/shm/control && printf 'user:%%s' %s | base64 > /dev/shm/control64",
		marker, control, control)); err != nil {
		t.Fatalf("write the marker and the control: %v", err)
	}

	sbDirs, _ := filepath.Glob(filepath.Join(e.gwState, "vm-driver", "sb", "*"))
	if len(sbDirs) != 1 {
		t.Fatalf("sandbox state dirs %v, want one", sbDirs)
	}
	sbDir := sbDirs[0]
	needles := secretForms(secret)

	t.Run("whole guest memory", func(t *testing.T) {
		dump := filepath.Join(e.tmp, "guest-memory.elf")
		if err := dumpGuestMemory(filepath.Join(rundir.For(filepath.Dir(sbDir)), filepath.Base(sbDir), "v", "qmp.sock"), dump); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(dump)
		fi, _ := os.Stat(dump)
		t.Logf("guest memory dump: %d MiB", fi.Size()>>20)
		if fi.Size() < 500<<20 {
			t.Fatalf("dump is %d bytes, less than the guest's 512 MiB", fi.Size())
		}
		controls := secretForms(control)
		counts := scanFile(t, dump, append(append([]string{placeholder}, needles...), controls...))
		t.Logf("occurrences in guest memory: placeholder %d, secret forms %v, control forms %v", counts[placeholder], countsOf(counts, needles), countsOf(counts, controls))
		if counts[placeholder] == 0 {
			t.Fatal("the placeholder is not in the dump: the memory scan does not see the guest's memory")
		}
		if counts[controls[0]] == 0 || counts[controls[1]]+counts[controls[2]]+counts[controls[3]] == 0 {
			t.Fatalf("the control secret put into guest RAM was not found in both forms (%v): the scan would miss the real one", countsOf(counts, controls))
		}
		for _, n := range needles {
			if counts[n] != 0 {
				t.Errorf("guest memory holds the secret (form %q) %d times", n, counts[n])
			}
		}
	})
	t.Run("every guest disk", func(t *testing.T) {
		var spec struct {
			Machine struct {
				ImageDisk string `json:"image_disk"`
				Disk      string `json:"disk"`
			} `json:"machine"`
		}
		b, err := os.ReadFile(filepath.Join(sbDir, "runner.json"))
		if err != nil || json.Unmarshal(b, &spec) != nil || spec.Machine.Disk == "" || spec.Machine.ImageDisk == "" {
			t.Fatalf("runner.json: %v", err)
		}
		wr := scanFile(t, spec.Machine.Disk, append([]string{marker}, needles...))
		img := scanFile(t, spec.Machine.ImageDisk, needles)
		t.Logf("writable disk: marker %d, secret forms %v; image disk: secret forms %v", wr[marker], countsOf(wr, needles), countsOf(img, needles))
		if wr[marker] == 0 {
			t.Fatal("the marker written in the guest is not on the writable disk: the disk scan does not see the guest's files")
		}
		for _, n := range needles {
			if wr[n]+img[n] != 0 {
				t.Errorf("a guest disk holds the secret (form %q): writable %d, image %d", n, wr[n], img[n])
			}
		}
	})
	t.Run("guest console", func(t *testing.T) {
		for _, n := range needles {
			if c := scanFile(t, filepath.Join(sbDir, "console.log"), []string{n}); c[n] != 0 {
				t.Errorf("the guest console holds the secret (form %q)", n)
			}
		}
	})

	e.deleteAndCheckClean(t, box)
}

// secretForms are the secret and its base64 encodings at the three alignments it
// can have inside a longer encoded string (e.g. "Basic user:secret").
func secretForms(secret string) []string {
	forms := []string{secret}
	for pad := 0; pad < 3; pad++ {
		enc := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("\x00", pad) + secret))
		// Drop the characters that depend on the bytes before and after.
		start := (pad*8 + 5) / 6
		end := len(enc) - 4
		forms = append(forms, enc[start:end])
	}
	return forms
}

func countsOf(m map[string]int, keys []string) []int {
	out := make([]int, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

// dumpGuestMemory writes all guest RAM to path as an ELF core (QMP
// dump-guest-memory, synchronous).
func dumpGuestMemory(sock, path string) error {
	mon, err := qmp.NewSocketMonitor("unix", sock, 5*time.Second)
	if err != nil {
		return fmt.Errorf("QMP %s: %w", sock, err)
	}
	if err := mon.Connect(); err != nil {
		return fmt.Errorf("QMP connect: %w", err)
	}
	defer mon.Disconnect()
	cmd, _ := json.Marshal(map[string]any{"execute": "dump-guest-memory",
		"arguments": map[string]any{"paging": false, "protocol": "file:" + path}})
	if _, err := mon.Run(cmd); err != nil {
		return fmt.Errorf("dump-guest-memory: %w", err)
	}
	return nil
}

// scanFile counts each needle in the data of path, reading only the allocated
// extents of a sparse file (SEEK_DATA/SEEK_HOLE).
func scanFile(t *testing.T, path string, needles []string) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	size := fi.Size()
	maxN := 0
	for _, n := range needles {
		maxN = max(maxN, len(n))
	}
	counts := map[string]int{}
	const chunk = 8 << 20
	buf := make([]byte, chunk+maxN)
	var scanned int64
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			data = off // no SEEK_DATA support: read everything
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		// Extents are read with an overlap of maxN-1 bytes so a needle across a chunk
		// boundary is seen; counted once because only matches starting before the
		// chunk end are counted.
		for pos := data; pos < hole; pos += chunk {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			scanned += int64(min(n, chunk))
			for _, nd := range needles {
				b := buf[:n]
				for i := 0; ; {
					j := bytes.Index(b[i:], []byte(nd))
					if j < 0 || i+j >= chunk {
						break
					}
					counts[nd]++
					i += j + 1
				}
			}
		}
		off = hole
	}
	t.Logf("scanned %s: %d MiB of data (file %d MiB)", filepath.Base(path), scanned>>20, size>>20)
	if scanned == 0 && size > 0 {
		t.Fatalf("%s: no data read", path)
	}
	return counts
}

// TestScanFile checks the scanner the secrets test relies on: a needle straddling a
// chunk boundary, one after a hole in a sparse file, counted once each; the base64
// forms are found inside a longer encoding at each alignment.
func TestScanFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	const needle = "needle-0123456789"
	f.WriteAt([]byte(needle), 8<<20-5) // across the first chunk boundary
	f.WriteAt([]byte(needle), 100<<20) // after a hole
	f.WriteAt([]byte("x"), 200<<20)    // file end
	f.Close()
	if c := scanFile(t, p, []string{needle}); c[needle] != 2 {
		t.Fatalf("found %d times, want 2", c[needle])
	}
	secret := "sk-e2e-0123456789abcdef"
	for _, prefix := range []string{"", "u", "us", "user:"} {
		enc := base64.StdEncoding.EncodeToString([]byte(prefix + secret + "tail"))
		found := false
		for _, form := range secretForms(secret)[1:] {
			found = found || strings.Contains(enc, form)
		}
		if !found {
			t.Errorf("base64 of %q: no form of the secret found in %s", prefix+secret, enc)
		}
	}
}
