// Package keyfile creates the gateway's private key files (the secrets key, the
// runner key): random bytes in a file only its owner can read.
package keyfile

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
)

// Create writes size random bytes to path (its directory 0700, the file 0600) and
// returns them. The file is created exclusively: when it exists already (another
// gateway starting at the same time won the race) the error wraps fs.ErrExist and the
// caller reads that key instead, so both use one key. A partly written file is
// removed.
func Create(path string, size int) ([]byte, error) {
	key := make([]byte, size)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("key directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating key file %s: %w", path, err)
	}
	_, werr := f.Write(key)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("writing key file %s: %w", path, werr)
	}
	return key, nil
}
