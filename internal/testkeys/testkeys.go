// Package testkeys makes throwaway keys for tests.
package testkeys

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"

	"golang.org/x/crypto/ssh"
)

// SSHPublicKey is a fresh ed25519 SSH public key (its private half is dropped): a
// host key for peers that are not a real SSH server, or a key other than the one a
// server presents.
func SSHPublicKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
