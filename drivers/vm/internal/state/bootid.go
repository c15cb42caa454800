package state

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// BootIDFile is where Linux exposes a random id drawn anew at every boot.
const BootIDFile = "/proc/sys/kernel/random/boot_id"

// maxBootID bounds a boot id (the kernel's is a 36-character UUID).
const maxBootID = 128

// HostBootID returns the current host boot id.
func HostBootID() (string, error) {
	b, err := os.ReadFile(BootIDFile)
	if err != nil {
		return "", fmt.Errorf("host boot id: %w", err)
	}
	id, err := ParseBootID(string(b))
	if err != nil {
		return "", fmt.Errorf("host boot id %s: %w", BootIDFile, err)
	}
	return id, nil
}

// ParseBootID checks a boot id as read from BootIDFile (surrounding whitespace is
// dropped): 1-128 printable ASCII characters without spaces, since it is compared
// verbatim with the one stored in state.json.
func ParseBootID(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty boot id")
	}
	if len(s) > maxBootID {
		return "", fmt.Errorf("boot id is %d bytes, at most %d expected", len(s), maxBootID)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' {
			return "", fmt.Errorf("boot id has byte %#x at %d: want printable ASCII without spaces", c, i)
		}
	}
	return s, nil
}
