package staticbin

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Both kinds of binary are built here with the Go toolchain: cgo through the net
// package gives a dynamic one, CGO_ENABLED=0 a static one.
func TestCheck(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed: cannot build a dynamically linked binary")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\nimport _ \"net\"\nimport \"os/user\"\nfunc main() { user.Current() }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := func(name, cgo string) string {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, src)
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo, "GOFLAGS=")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build (CGO_ENABLED=%s): %v\n%s", cgo, err, b)
		}
		return out
	}
	if err := Check(build("static", "0")); err != nil {
		t.Errorf("static binary refused: %v", err)
	}
	if err := Check(build("dynamic", "1")); !errors.Is(err, ErrDynamic) {
		t.Errorf("dynamic binary: err = %v, want ErrDynamic", err)
	}
	if err := Check(src); err == nil {
		t.Errorf("a Go source file passed as an executable")
	}
}
