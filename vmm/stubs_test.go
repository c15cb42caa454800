package vmm_test

import (
	"errors"
	"testing"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/libkrun"
	"github.com/openshell/openshell/vmm/vz"
)

func TestStubBackendsSayNotSupported(t *testing.T) {
	cfg := vmm.Config{Name: "x"}
	if _, err := libkrun.New(cfg); !errors.Is(err, vmm.ErrNotSupported) {
		t.Fatalf("libkrun.New: %v", err)
	}
	if _, err := vz.New(cfg); !errors.Is(err, vmm.ErrNotSupported) {
		t.Fatalf("vz.New: %v", err)
	}
}
