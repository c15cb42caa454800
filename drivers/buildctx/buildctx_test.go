package buildctx

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDockerignore(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte("# c\n\n*.key\n/build\nsub/*.tmp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pats, err := ReadIgnore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]bool{
		"a.key": true, "build": true, "build/x/y": true, "sub/a.tmp": true,
		"sub/a.txt": false, "a.txt": false, "deep/a.key": false, "keep/build": false,
	} {
		if got := Ignored(rel, pats); got != want {
			t.Errorf("Ignored(%q) = %v, want %v (patterns %q)", rel, got, want, pats)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte("!keep.key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadIgnore(dir); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("exception pattern: %v, want a 'not supported' error", err)
	}
}

// FuzzDockerignore: any .dockerignore either fails to parse or yields patterns that
// match without panicking, and a pattern always excludes the path it names literally
// when it has no glob characters.
func FuzzDockerignore(f *testing.F) {
	for _, s := range []string{"*.key\n", "/build\n", "a/[b-c]\n", "!x\n", "[\n", "../x\n", "# c\n\n"} {
		f.Add(s, "build/x")
	}
	f.Fuzz(func(t *testing.T, content, rel string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		pats, err := ReadIgnore(dir)
		if err != nil {
			return
		}
		_ = Ignored(rel, pats)
		for _, p := range pats {
			if !strings.ContainsAny(p, `*?[\`) && p != "." && !strings.HasPrefix(p, "..") && !Ignored(p, pats) {
				t.Fatalf("pattern %q does not exclude itself", p)
			}
		}
	})
}
