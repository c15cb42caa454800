package supervisor

import (
	"bytes"
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
	a, b := Prewarm(), Prewarm()
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
	w := Prewarm()
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
