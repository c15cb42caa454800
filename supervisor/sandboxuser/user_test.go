package sandboxuser

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeEtc(t testing.TB, passwd, group string) DB {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte(passwd), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "group"), []byte(group), 0o644); err != nil {
		t.Fatal(err)
	}
	return DB{Root: root}
}

const passwd = `root:x:0:0:root:/root:/bin/bash
# comment
bad line
node:x:1000:1000::/home/node:/bin/sh
app:x:1001:1001::/srv/app:/bin/bash
`
const group = `root:x:0:
node:x:1000:
app:x:1001:
docker:x:999:app,node
`

func TestResolve(t *testing.T) {
	db := writeEtc(t, passwd, group)
	tests := []struct {
		spec       string
		name       string
		uid, gid   uint32
		home       string
		groups     int
		wantErrSub string
	}{
		{spec: "node", name: "node", uid: 1000, gid: 1000, home: "/home/node", groups: 1},
		{spec: "1001", name: "app", uid: 1001, gid: 1001, home: "/srv/app", groups: 1},
		{spec: "app:docker", name: "app", uid: 1001, gid: 999, home: "/srv/app"},
		{spec: "4242:4343", name: "4242", uid: 4242, gid: 4343, home: "/"},
		{spec: "ghost", wantErrSub: "not in"},
		{spec: "node:nogroup", wantErrSub: "group"},
		{spec: ":1", wantErrSub: "no user part"},
	}
	for _, tc := range tests {
		t.Run(tc.spec, func(t *testing.T) {
			u, err := db.Resolve(tc.spec)
			if tc.wantErrSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrSub) {
					t.Fatalf("Resolve(%q) err = %v, want containing %q", tc.spec, err, tc.wantErrSub)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Name != tc.name || u.UID != tc.uid || u.GID != tc.gid || u.Home != tc.home || len(u.Groups) != tc.groups {
				t.Fatalf("Resolve(%q) = %+v", tc.spec, u)
			}
		})
	}
}

func TestEnsureDefault(t *testing.T) {
	db := writeEtc(t, passwd, strings.TrimSuffix(group, "\n")) // no trailing newline: must not glue lines
	u, err := db.EnsureDefault("/sandbox", "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if u.UID != 1002 || u.GID != 1002 || u.Name != DefaultName {
		t.Fatalf("EnsureDefault = %+v, want uid/gid 1002", u)
	}
	// Idempotent: a second call finds the user instead of adding another.
	u2, err := db.EnsureDefault("/sandbox", "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if u2.UID != u.UID || u2.Home != "/sandbox" {
		t.Fatalf("second EnsureDefault = %+v", u2)
	}
	data, _ := os.ReadFile(filepath.Join(db.Root, "etc", "passwd"))
	if n := strings.Count("\n"+string(data), "\nsandbox:"); n != 1 {
		t.Fatalf("passwd has %d sandbox lines:\n%s", n, data)
	}
	gdata, _ := os.ReadFile(filepath.Join(db.Root, "etc", "group"))
	if !strings.Contains(string(gdata), "docker:x:999:app,node\nsandbox:x:1002:\n") {
		t.Fatalf("group file:\n%s", gdata)
	}
}

func TestEnsureDefaultEmptyRoot(t *testing.T) {
	db := DB{Root: t.TempDir()}
	u, err := db.EnsureDefault("/sandbox", "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if u.UID != 1000 {
		t.Fatalf("uid = %d, want 1000", u.UID)
	}
}

func TestIsRoot(t *testing.T) {
	for s, want := range map[string]bool{"root": true, "0": true, "0:0": true, "node": false, "": false, "1000": false} {
		if got := IsRoot(s); got != want {
			t.Errorf("IsRoot(%q) = %v", s, got)
		}
	}
}

func FuzzParsePasswd(f *testing.F) {
	f.Add([]byte(passwd))
	f.Add([]byte("a:b:c:d:e:f:g\n::::::\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, e := range ParsePasswd(data) {
			if e.Name == "" {
				t.Fatalf("entry without a name from %q", data)
			}
		}
		for _, g := range ParseGroup(data) {
			if g.Name == "" {
				t.Fatalf("group without a name from %q", data)
			}
		}
	})
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"node", "1000:1000", ":", "a:b:c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := ParseSpec(s)
		if err == nil && (sp.User == "" || strings.Contains(sp.User, ":")) {
			t.Fatalf("ParseSpec(%q) = %+v", s, sp)
		}
	})
}
