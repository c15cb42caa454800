package hub

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/metadata"

	"github.com/openshell/openshell/internal/instancemd"
)

// FuzzInstanceFromContext: the instance metadata of a supervisor call comes from the
// sandbox side of the trust boundary. Whatever it holds, parsing never panics, fails
// only with ErrBadIdentity, and a parsed host key round-trips.
func FuzzInstanceFromContext(f *testing.F) {
	key := "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	f.Add("inst-1", "ab12", key, "", false)
	f.Add("", "", "", "", false)
	f.Add("i", "s", "!!!", "", false)
	f.Add("i", "s", base64.StdEncoding.EncodeToString([]byte("not a key")), "", true)
	f.Add("i", string(make([]byte, 300)), key, "hello-id", true)
	f.Fuzz(func(t *testing.T, id, secret, hostKey, helloID string, twice bool) {
		md := metadata.MD{}
		if id != "" {
			md.Append(instancemd.InstanceID, id)
		}
		if secret != "" {
			md.Append(instancemd.InstanceSecret, secret)
			if twice {
				md.Append(instancemd.InstanceSecret, secret)
			}
		}
		if hostKey != "" {
			md.Append(instancemd.HostKey, hostKey)
		}
		inst, err := InstanceFromContext(metadata.NewIncomingContext(context.Background(), md), helloID)
		if err != nil {
			if !errors.Is(err, ErrBadIdentity) {
				t.Fatalf("error %v is not ErrBadIdentity", err)
			}
			return
		}
		if twice && secret != "" {
			t.Fatal("a secret given twice was accepted")
		}
		if len(inst.Secret) > maxSecretLen {
			t.Fatalf("a %d-byte secret was accepted", len(inst.Secret))
		}
		if helloID != "" && inst.ID != helloID {
			t.Fatalf("id %q, want the hello's %q", inst.ID, helloID)
		}
		if inst.HostKey != nil {
			again, err := ssh.ParsePublicKey(inst.HostKey.Marshal())
			if err != nil || string(again.Marshal()) != string(inst.HostKey.Marshal()) {
				t.Fatalf("host key does not round-trip: %v", err)
			}
		}
	})
}
