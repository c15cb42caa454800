// Package secrets encrypts values the gateway must keep at rest (provider credentials)
// with a key that lives in the gateway's state directory, outside the database: a copy
// of the database alone (a backup, a shared PostgreSQL) reveals no secret.
//
// The cipher is AES-256-GCM with a random 96-bit nonce per value; each ciphertext is
// bound to associated data (e.g. the object it belongs to) so a value cannot be moved
// to another record unnoticed.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/openshell/openshell/internal/keyfile"
)

// KeyFile is the key's file name in the gateway state directory.
const KeyFile = "secrets.key"

const (
	keySize = 32
	// formatV1 is the first byte of every ciphertext, so the format can change later.
	formatV1 byte = 1
)

// ErrDecrypt means a ciphertext could not be opened: another gateway's key, a replaced
// key file, or corrupt data.
var ErrDecrypt = errors.New("secrets: cannot decrypt")

// Box seals and opens values with the gateway's key.
type Box struct {
	aead cipher.AEAD
	path string
}

// LoadOrCreate reads the key at path, creating it (0600, random) when missing. A key
// file readable by group or others is refused: fix it with chmod 600.
func LoadOrCreate(path string) (*Box, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = keyfile.Create(path, keySize)
		if errors.Is(err, fs.ErrExist) {
			// Two gateways starting at once must not overwrite each other's key.
			return LoadOrCreate(path)
		}
		if err != nil {
			return nil, fmt.Errorf("secrets: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("secrets: reading key file %s: %w", path, err)
	} else {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("secrets: key file %s: %w", path, err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("secrets: key file %s has mode %v; it must be private to the gateway: chmod 600 %s", path, fi.Mode().Perm(), path)
		}
	}
	return New(key, path)
}

// New builds a Box from a 32-byte key; source names the key in error messages.
func New(key []byte, source string) (*Box, error) {
	if len(key) != keySize {
		return nil, fmt.Errorf("secrets: key %s is %d bytes, want %d: remove it to generate a new one (stored secrets are then lost)", source, len(key), keySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secrets: key %s: %w", source, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secrets: key %s: %w", source, err)
	}
	return &Box{aead: aead, path: source}, nil
}

// Seal encrypts plaintext bound to ad (the same ad is needed to open it).
func (b *Box) Seal(plaintext, ad []byte) ([]byte, error) {
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("secrets: nonce: %w", err)
	}
	out := make([]byte, 0, 1+len(nonce)+len(plaintext)+b.aead.Overhead())
	out = append(out, formatV1)
	out = append(out, nonce...)
	return b.aead.Seal(out, nonce, plaintext, ad), nil
}

// Open decrypts a value from Seal. Errors wrap ErrDecrypt and name the key file.
func (b *Box) Open(ciphertext, ad []byte) ([]byte, error) {
	ns := b.aead.NonceSize()
	if len(ciphertext) < 1+ns+b.aead.Overhead() || ciphertext[0] != formatV1 {
		return nil, fmt.Errorf("%w: value is not a sealed secret (corrupt or foreign data): %w", ErrDecrypt, errors.ErrUnsupported)
	}
	pt, err := b.aead.Open(nil, ciphertext[1:1+ns], ciphertext[1+ns:], ad)
	if err != nil {
		return nil, fmt.Errorf("%w with key %s: it was sealed with another key (was the key file replaced?) or the data is corrupt", ErrDecrypt, b.path)
	}
	return pt, nil
}
