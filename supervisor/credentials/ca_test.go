package credentials

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteBundle: the bundle replaces the old one whole: the system roots and the
// new CA (not the old), mode 0644, and no temporary file is left beside it.
func TestWriteBundle(t *testing.T) {
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
	if err := ca.WriteBundle(path); err != nil {
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
	if ents, _ := os.ReadDir(dir); len(ents) != 1 || ents[0].Name() != "ca-bundle.pem" {
		t.Errorf("%s holds %v, want only the bundle", dir, ents)
	}
}

// TestCAName: a CA is named after its sandbox; one made ahead, before the sandbox is
// known, after none.
func TestCAName(t *testing.T) {
	for sandbox, want := range map[string]string{"sb-1": "openshell sandbox CA sb-1", "": "openshell sandbox CA"} {
		ca, err := NewCA(sandbox)
		if err != nil {
			t.Fatal(err)
		}
		if cn := ca.cert.Subject.CommonName; cn != want {
			t.Errorf("NewCA(%q) is named %q, want %q", sandbox, cn, want)
		}
	}
}
