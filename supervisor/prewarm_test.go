package supervisor

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/openshell/openshell/supervisor/reaper"
	"github.com/openshell/openshell/supervisor/sandboxuser"
	"github.com/openshell/openshell/supervisor/sshd"
)

// TestPrewarm: the warm-up ends on its own, makes one SSH host key that is handed out
// once (a second take gets none, so no two servers share it) and that the SSH server
// then presents; two warm-ups (two pooled VMs) never make the same key.
func TestPrewarm(t *testing.T) {
	a, b := Prewarm("", 0), Prewarm("", 0)
	for _, w := range []*Warm{a, b} {
		select {
		case <-w.Done():
		case <-time.After(time.Minute):
			t.Fatal("the warm-up did not end")
		}
	}
	ka := a.takeHostKey()
	if ka == nil {
		t.Fatal("no host key made ahead")
	}
	if again := a.takeHostKey(); again != nil {
		t.Fatal("the host key was handed out twice")
	}
	kb := b.takeHostKey()
	if kb == nil || bytes.Equal(ka.PublicKey().Marshal(), kb.PublicKey().Marshal()) {
		t.Fatal("two warm-ups made the same host key (or none)")
	}
	r := reaper.New(false)
	defer r.Close()
	srv, err := sshd.New(sshd.Config{User: &sandboxuser.User{Name: "u", UID: 1000, GID: 1000}, Reaper: r, HostKey: ka})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(srv.HostKey().Marshal(), ka.PublicKey().Marshal()) {
		t.Fatal("the SSH server does not present the key made ahead")
	}
	var nilWarm *Warm // Run without a warm-up
	nilWarm.stop()
	if nilWarm.takeHostKey() != nil {
		t.Fatal("a nil warm-up handed out a key")
	}
}

// TestPrewarmStop: a stopped warm-up ends promptly (Run stops it when the
// configuration arrives, so that it does not compete with the start-up).
func TestPrewarmStop(t *testing.T) {
	w := Prewarm("", 0)
	w.stop()
	select {
	case <-w.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("a stopped warm-up still runs")
	}
}

// TestRehearseSession: the in-process rehearsal of the first gateway calls completes
// (config answered with a policy that the start's conversion takes, session hello
// answered with session_accepted, a log push), so the warm-up
// really runs those code paths rather than failing at the first call.
func TestRehearseSession(t *testing.T) {
	if err := rehearseSession(t.Context()); err != nil {
		t.Fatalf("rehearsal: %v", err)
	}
}

// TestRehearsePlaceholders: the warm-up's placeholder fetch really runs the fetch and
// the decode (it gets the canned provider back) rather than failing early.
func TestRehearsePlaceholders(t *testing.T) {
	set, err := rehearsePlaceholders()
	if err != nil {
		t.Fatalf("rehearsal: %v", err)
	}
	if len(set.Providers) != 1 || set.Providers[0].Name != "rehearsal" {
		t.Fatalf("rehearsal decoded %+v", set.Providers)
	}
}

// TestCAHandOff: a warm-up makes the sandbox CA and writes its bundle at the bundle's
// path; the start takes the CA, once. A CA whose bundle went to another path is not
// handed out and its file is removed; one asked for before it was made is never
// written. Two warm-ups never make the same CA.
func TestCAHandOff(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, CABundlePath)
	path2 := filepath.Join(t.TempDir(), CABundlePath)
	w, w2 := Prewarm(path, 0), Prewarm(path2, 0)
	for _, w := range []*Warm{w, w2} {
		select {
		case <-w.Done():
		case <-time.After(time.Minute):
			t.Fatal("the warm-up did not end")
		}
	}
	ca := w.takeCA(path)
	if ca == nil {
		t.Fatal("no CA made ahead")
	}
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, ca.CertPEM()) {
		t.Fatal("the bundle at the path does not end with the CA made ahead")
	}
	if again := w.takeCA(path); again != nil {
		t.Fatal("the CA was handed out twice")
	}
	if ca2 := w2.takeCA(path2); ca2 == nil || bytes.Equal(ca.CertPEM(), ca2.CertPEM()) {
		t.Fatal("two warm-ups made the same CA (or none)")
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(m) != 0 {
		t.Fatalf("temporary files left beside the bundle: %v", m)
	}

	// Written for another path: not handed out, and removed.
	elsewhere := filepath.Join(root, "elsewhere", "ca.pem")
	other := &Warm{}
	other.prepareCA(elsewhere)
	if _, err := os.Stat(elsewhere); err != nil {
		t.Fatalf("the warm-up wrote no bundle: %v", err)
	}
	if other.takeCA(path) != nil {
		t.Fatal("a CA whose bundle is elsewhere was handed out")
	}
	if _, err := os.Stat(elsewhere); !os.IsNotExist(err) {
		t.Fatalf("the bundle written elsewhere is left: %v", err)
	}
	// Asked for before it was made: never written.
	late := &Warm{}
	fresh := filepath.Join(t.TempDir(), CABundlePath)
	if late.takeCA(fresh) != nil {
		t.Fatal("a CA before any was made")
	}
	late.prepareCA(fresh)
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("a bundle was written after the start asked: %v", err)
	}
}
