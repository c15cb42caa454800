// Package binpath finds the project's companion executables (openshell-gateway,
// openshell-driver-vm, openshell-sandbox): they are installed side by side, so the
// directory of the running program is searched before PATH.
package binpath

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Find returns override when set (it must exist), else name next to the running
// executable, else name on PATH. Callers add where an override comes from.
func Find(name, override string) (string, error) {
	if override != "" {
		if _, err := os.Stat(override); err != nil {
			return "", fmt.Errorf("%s: %w", override, err)
		}
		return override, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found next to %s or on PATH; build it (go build ./cmd/%s)", name, selfName(), name)
	}
	return p, nil
}

func selfName() string {
	if exe, err := os.Executable(); err == nil {
		return filepath.Base(exe)
	}
	return "this program"
}
