package credentials

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestBundleDraft: the roots are written ahead beside the bundle's path, which holds
// nothing new until Finish adds the CA and renames the draft over it; the bundle is
// then the roots and the CA, mode 0644, and no draft is left. Discard leaves nothing.
// A draft sealed ahead with a CA changes nothing in place either, Finish with that CA
// puts it there, Finish with another CA is refused and leaves the bundle and no draft.
func TestBundleDraft(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc", "openshell")
	path := filepath.Join(dir, "ca-bundle.pem")
	ca, err := NewCA("sb-1")
	if err != nil {
		t.Fatal(err)
	}
	old, err := NewCA("sb-0")
	if err != nil {
		t.Fatal(err)
	}
	if err := old.WriteBundle(path); err != nil {
		t.Fatal(err)
	}

	d, err := DraftBundle(path)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Contains(b, old.CertPEM()) {
		t.Fatal("the draft touched the bundle in place before Finish")
	}
	if err := d.Finish(ca); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(b, ca.CertPEM()) || bytes.Contains(b, old.CertPEM()) {
		t.Fatalf("bundle does not end with the new CA alone (%d bytes)", len(b))
	}
	if roots := SystemRoots(); roots != nil && !bytes.HasPrefix(b, roots) {
		t.Fatal("bundle does not start with the system roots")
	} else if roots == nil {
		t.Log("no system roots on this host: the bundle holds the CA only")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("bundle mode %v, want 0644", st.Mode().Perm())
	}

	d, err = DraftBundle(path)
	if err != nil {
		t.Fatal(err)
	}
	d.Discard()
	onlyBundle := func(when string) {
		t.Helper()
		if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != "ca-bundle.pem" {
			t.Errorf("%s: %s holds %v, want only the bundle (no draft left)", when, dir, ents)
		}
	}
	onlyBundle("discarded")

	ahead, err := NewCA("")
	if err != nil {
		t.Fatal(err)
	}
	if cn := ahead.cert.Subject.CommonName; cn != "openshell sandbox CA" {
		t.Errorf("a CA made ahead is named %q", cn)
	}
	d, err = DraftBundle(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Seal(ahead); err != nil {
		t.Fatal(err)
	}
	if err := d.Seal(ahead); err == nil {
		t.Error("a draft was sealed twice")
	}
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, ca.CertPEM()) {
		t.Fatal("sealing the draft touched the bundle in place")
	}
	if err := d.Finish(ahead); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, ahead.CertPEM()) || bytes.Contains(b, ca.CertPEM()) {
		t.Fatal("the sealed draft was not put in place")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("sealed bundle mode %v, want 0644", st.Mode().Perm())
	}
	onlyBundle("sealed and finished")

	d, err = DraftBundle(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Seal(ahead); err != nil {
		t.Fatal(err)
	}
	if err := d.Finish(ca); err == nil {
		t.Error("a draft sealed with one CA was finished with another")
	}
	if b, _ := os.ReadFile(path); !bytes.HasSuffix(b, ahead.CertPEM()) {
		t.Error("a refused Finish changed the bundle")
	}
	onlyBundle("refused")
}
