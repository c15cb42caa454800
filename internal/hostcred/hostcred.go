// Package hostcred is the credential a VM sandbox's runner (on the host) shows the
// gateway to receive the real values of the sandbox's provider credentials, which the
// gateway refuses to the guest.
//
// The guest and its runner hold the same sandbox token, so the token alone cannot
// tell them apart. The gateway keeps a random runner key (Key, a 0600 file in the VM
// driver's state directory, created by the gateway when it starts the driver, which
// learns its path from a flag). The driver gives each runner the credential of its
// own sandbox only, Derive(key, sandbox id), in the runner's spec file on the host;
// it never enters the guest's bootstrap document. The runner sends it as gRPC
// metadata (MetadataKey) beside the sandbox token; the gateway derives the same value
// and compares. A compromised guest has the token but not the credential, and a
// runner's credential is worth nothing for another sandbox.
//
// Why this rather than a channel the guest cannot reach: the runner already talks to
// the gateway over the address it bridges guest sessions to, so a separate channel
// would need its own listener, transport security and peer check on both ends, and
// the compute contract carries no per-sandbox secret for the driver. A key created
// by the gateway and one HMAC per sandbox needs neither; it survives gateway and
// driver restarts (runners outlive both) because the key file is kept.
package hostcred

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/openshell/openshell/internal/keyfile"
)

// MetadataKey is the gRPC metadata key that carries the runner credential.
const MetadataKey = "x-openshell-runner-credential"

// KeyFile is the key's file name in the VM driver's state directory.
const KeyFile = "runner.key"

const keySize = 32

// Derive is the runner credential of one sandbox (64 hex digits).
func Derive(key []byte, sandboxID string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("openshell runner credential v1\x00"))
	m.Write([]byte(sandboxID))
	return hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether cred is the runner credential of sandboxID under key, in
// constant time. An empty key verifies nothing.
func Verify(key []byte, sandboxID, cred string) bool {
	if len(key) == 0 || cred == "" {
		return false
	}
	return hmac.Equal([]byte(Derive(key, sandboxID)), []byte(cred))
}

// LoadOrCreate reads the key at path, creating it (random, 0600) when missing. A key
// readable by group or others, or of the wrong size, is refused with the fix.
func LoadOrCreate(path string) ([]byte, error) {
	key, err := Load(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key, err = keyfile.Create(path, keySize)
	if errors.Is(err, fs.ErrExist) {
		// Two gateways starting at once must agree on one key.
		return Load(path)
	}
	if err != nil {
		return nil, fmt.Errorf("runner key: %w", err)
	}
	return key, nil
}

// Load reads an existing key (fs.ErrNotExist when there is none).
func Load(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("runner key %s: %w", path, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("runner key %s has mode %v; it must be private: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("runner key %s: %w", path, err)
	}
	if len(key) != keySize {
		return nil, fmt.Errorf("runner key %s is %d bytes, want %d: remove it and restart the gateway (VM sandboxes then get provider credentials after they are started again)", path, len(key), keySize)
	}
	return key, nil
}
