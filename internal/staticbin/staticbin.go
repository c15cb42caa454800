// Package staticbin checks that an executable needs no dynamic loader: the supervisor
// binary is copied into images that may have no libc (busybox, distroless) and into a
// VM's initramfs, where a dynamically linked binary fails with a bare "no such file
// or directory" from exec.
package staticbin

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
)

// BuildHint is how to build the supervisor so that it passes Check.
const BuildHint = "CGO_ENABLED=0 go build -o <dir>/openshell-sandbox ./cmd/openshell-sandbox"

// ErrDynamic means the binary names a dynamic loader (an ELF PT_INTERP header).
var ErrDynamic = errors.New("is dynamically linked")

// Check opens path as an ELF executable and returns an error wrapping ErrDynamic when
// it needs a dynamic loader.
func Check(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an ELF executable: %w", path, err)
	}
	defer f.Close()
	if _, err := Machine(f); err != nil {
		return fmt.Errorf("%s %w", path, err)
	}
	return nil
}

// Machine reads the ELF executable in r, returns an error wrapping ErrDynamic when it
// needs a dynamic loader, and otherwise the machine it is built for.
func Machine(r io.ReaderAt) (elf.Machine, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return 0, fmt.Errorf("is not an ELF executable: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return 0, fmt.Errorf("%w (it needs a loader that images without glibc and initramfs lack)", ErrDynamic)
		}
	}
	return f.Machine, nil
}
