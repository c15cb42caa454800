package drivers

import (
	"fmt"

	"github.com/openshell/openshell/api/computev1"
)

// Limits shared by every driver, so a sandbox valid for one driver is valid
// for all: ids are the gateway's (UUIDs in practice), names end up as
// container names, Kubernetes object names and guest host names.
const (
	MaxIDLen   = 128
	MaxNameLen = 63
)

// ValidateID checks a sandbox id: 1..128 characters of [A-Za-z0-9._-]
// (the charset clients may interpolate into SSH ProxyCommands).
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("sandbox id is empty: %w; the gateway must assign one", ErrInvalidArgument)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("sandbox id %.16q... is %d bytes: %w; at most %d allowed", id, len(id), ErrInvalidArgument, MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("sandbox id %q: %w: character %q not allowed; use [A-Za-z0-9._-]", id, ErrInvalidArgument, c)
		}
	}
	return nil
}

// ValidateName checks a sandbox name: a DNS label, 1..63 characters of
// lowercase letters, digits and '-', starting and ending with a letter or digit.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("sandbox name is empty: %w", ErrInvalidArgument)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("sandbox name %.16q... is %d bytes: %w; at most %d allowed", name, len(name), ErrInvalidArgument, MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		lowerAlnum := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if lowerAlnum || (c == '-' && i != 0 && i != len(name)-1) {
			continue
		}
		return fmt.Errorf("sandbox name %q: %w: use lowercase letters, digits and '-' (not first or last)", name, ErrInvalidArgument)
	}
	return nil
}

// ValidateSandbox runs the checks every driver applies to a create request:
// a valid id and name and a spec. Drivers add their own checks after it.
func ValidateSandbox(sb *computev1.DriverSandbox) error {
	if sb == nil {
		return fmt.Errorf("create request has no sandbox: %w", ErrInvalidArgument)
	}
	if err := ValidateID(sb.GetId()); err != nil {
		return err
	}
	if err := ValidateName(sb.GetName()); err != nil {
		return fmt.Errorf("sandbox %s: %w", sb.GetId(), err)
	}
	if sb.GetSpec() == nil {
		return fmt.Errorf("sandbox %s: spec is missing: %w", sb.GetId(), ErrInvalidArgument)
	}
	return nil
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}
