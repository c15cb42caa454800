// Package backends knows every vmm backend: their features, whether each can run on
// this host, and which one "auto" picks (vz on macOS, libkrun where its library and
// hardware KVM are present, QEMU everywhere else), always with the reason.
package backends

import (
	"errors"
	"fmt"
	"runtime"
	"strings"

	"github.com/openshell/openshell/vmm"
	"github.com/openshell/openshell/vmm/libkrun"
	"github.com/openshell/openshell/vmm/qemu"
	"github.com/openshell/openshell/vmm/vz"
)

// Backend names (the VM driver's `backend` setting).
const (
	Auto    = "auto"
	QEMU    = "qemu"
	Libkrun = "libkrun"
	VZ      = "vz"
)

// Names lists the accepted values of a backend setting.
var Names = []string{Auto, QEMU, Libkrun, VZ}

// Backend describes one backend.
type Backend struct {
	Name     string
	Features vmm.Features
	// Available returns nil when the backend can run on this host, else why not and
	// how to fix it.
	Available func() error
}

// Probes are the host checks Choose relies on; tests replace them.
type Probes struct {
	GOOS    string
	Libkrun func() error // libkrun.Available
	VZ      func() error // vz.Available
	QEMU    func() error // qemu binary present
}

// HostProbes checks this host.
func HostProbes() Probes {
	return Probes{GOOS: runtime.GOOS, Libkrun: func() error { return libkrun.Available() }, VZ: vz.Available, QEMU: qemuAvailable}
}

func qemuAvailable() error { return qemu.Available(qemu.DefaultBinary) }

// All returns every backend with its availability check on this host.
func All() []Backend { return all(HostProbes()) }

func all(p Probes) []Backend {
	return []Backend{
		{Name: VZ, Features: vz.Features(), Available: p.VZ},
		{Name: Libkrun, Features: libkrun.Features(), Available: p.Libkrun},
		{Name: QEMU, Features: qemu.Features(), Available: p.QEMU},
	}
}

// Choice is the backend picked and why.
type Choice struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Validate checks a backend setting, naming the values it accepts.
func Validate(name string) error {
	for _, n := range Names {
		if name == n {
			return nil
		}
	}
	return fmt.Errorf("backend %q: use one of %s", name, strings.Join(Names, ", "))
}

// Choose resolves a backend setting on this host.
func Choose(requested string) (Choice, error) { return choose(requested, HostProbes()) }

func choose(requested string, p Probes) (Choice, error) {
	if requested == "" {
		requested = Auto
	}
	if err := Validate(requested); err != nil {
		return Choice{}, err
	}
	if requested != Auto {
		for _, b := range all(p) {
			if b.Name == requested {
				if err := b.Available(); err != nil {
					return Choice{}, fmt.Errorf("backend %s was requested but cannot run here: %w (use backend auto to fall back to one that can)", requested, err)
				}
				return Choice{Name: requested, Reason: "requested"}, nil
			}
		}
	}
	var why []string
	if p.GOOS == "darwin" {
		err := p.VZ()
		if err == nil {
			return Choice{Name: VZ, Reason: "macOS: Virtualization.framework"}, nil
		}
		why = append(why, "vz: "+err.Error())
	}
	if err := p.Libkrun(); err == nil {
		return Choice{Name: Libkrun, Reason: "libkrun library and hardware KVM present"}, nil
	} else {
		why = append(why, "libkrun: "+err.Error())
	}
	if err := p.QEMU(); err != nil {
		why = append(why, "qemu: "+err.Error())
		return Choice{}, errors.New("no VM backend can run here: " + strings.Join(why, "; "))
	}
	return Choice{Name: QEMU, Reason: "fallback: " + strings.Join(why, "; ")}, nil
}
