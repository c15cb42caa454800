package supervisor

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/openshell/openshell/supervisor/credentials"
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

// TestBundleDraftHandOff: a warm-up makes the sandbox CA and writes its bundle beside
// the bundle's path; the start takes both, once, and puts the bundle in place. A
// bundle for another path, or one written after the start asked for it, is dropped
// and leaves no file. Two warm-ups never make the same CA.
func TestBundleDraftHandOff(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, CABundlePath)
	w, w2 := Prewarm(path, 0), Prewarm(filepath.Join(t.TempDir(), CABundlePath), 0)
	for _, w := range []*Warm{w, w2} {
		select {
		case <-w.Done():
		case <-time.After(time.Minute):
			t.Fatal("the warm-up did not end")
		}
	}
	drafts := func() []string {
		m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*draft*"))
		return m
	}
	if len(drafts()) != 1 {
		t.Fatalf("drafts after the warm-up: %v, want one", drafts())
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("the warm-up put a bundle in place before the start")
	}
	ca, draft := w.takeCA(path)
	if ca == nil || draft == nil {
		t.Fatal("no CA and bundle made ahead")
	}
	if ca2, _ := w2.takeCA(w2.bundlePath); ca2 == nil || bytes.Equal(ca.CertPEM(), ca2.CertPEM()) {
		t.Fatal("two warm-ups made the same CA (or none)")
	}
	got, err := writeCABundle(root, ca, draft)
	if err != nil || got != path {
		t.Fatalf("writeCABundle = %q, %v", got, err)
	}
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, ca.CertPEM()) {
		t.Fatal("the bundle does not end with the CA made ahead")
	}
	if ca, d := w.takeCA(path); ca != nil || d != nil || len(drafts()) != 0 {
		t.Fatalf("a CA handed out twice (%v) or a draft left behind: %v", ca != nil, drafts())
	}

	// A start without a warm-up's CA writes the bundle of its own.
	own, err := credentials.NewCA("sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writeCABundle(root, own, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, own.CertPEM()) {
		t.Fatal("the bundle does not end with the start's own CA")
	}

	// Written for another path: dropped.
	other := &Warm{}
	other.prepareCA(filepath.Join(root, "elsewhere", "ca.pem"))
	if ca, d := other.takeCA(path); ca != nil || d != nil {
		t.Fatal("a CA made for another path was handed out")
	}
	// Asked for before it was written: dropped once written.
	late := &Warm{}
	if ca, _ := late.takeCA(path); ca != nil {
		t.Fatal("a CA before any was made")
	}
	late.prepareCA(path)
	if m, _ := filepath.Glob(filepath.Join(root, "*", "*", ".*draft*")); len(m) != 0 {
		t.Fatalf("drafts left behind: %v", m)
	}
	if m, _ := filepath.Glob(filepath.Join(root, "elsewhere", ".*draft*")); len(m) != 0 {
		t.Fatalf("drafts left behind: %v", m)
	}
}
