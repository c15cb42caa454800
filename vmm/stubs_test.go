package vmm_test

import (
	"errors"
	"runtime"
	"testing"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/vz"
)

func TestVZNeedsMacOS(t *testing.T) {
	if runtime.GOOS == "darwin" {
		t.Skip("on macOS vz is real")
	}
	if _, err := vz.New(vmm.Config{Name: "x"}); !errors.Is(err, vmm.ErrNotSupported) {
		t.Fatalf("vz.New: %v", err)
	}
	if err := vz.Available(); !errors.Is(err, vmm.ErrNotSupported) {
		t.Fatalf("vz.Available: %v", err)
	}
}
