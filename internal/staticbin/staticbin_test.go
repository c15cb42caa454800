package staticbin

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The static binary is built here (CGO_ENABLED=0); the dynamic one is the system's
// /bin/true, which Debian links against glibc.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	static := filepath.Join(dir, "static")
	cmd := exec.Command("go", "build", "-o", static, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	if err := Check(static); err != nil {
		t.Errorf("static binary refused: %v", err)
	}
	if err := Check("/bin/true"); !errors.Is(err, ErrDynamic) {
		t.Errorf("/bin/true: err = %v, want ErrDynamic", err)
	}
	if err := Check(src); err == nil {
		t.Errorf("a Go source file passed as an executable")
	}
}
