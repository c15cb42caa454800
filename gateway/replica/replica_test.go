package replica

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/peerv1"
	"github.com/openshell/openshell/gateway/hub"
	"github.com/openshell/openshell/gateway/pki"
	"github.com/openshell/openshell/gateway/store"
)

// relayVia opens Peer.Relay on addr with client TLS cfg and returns the first answer's error.
func relayVia(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := t.Context()
	s, err := peerv1.NewPeerClient(cc).Relay(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&peerv1.PeerRelayFrame{Payload: &peerv1.PeerRelayFrame_Open{Open: &peerv1.PeerRelayOpen{SandboxId: "sb-1",
		Target: &openshellv1.RelayOpen{Target: &openshellv1.RelayOpen_Ssh{Ssh: &openshellv1.SshRelayTarget{}}}}}}); err != nil {
		return err
	}
	_, err = s.Recv()
	return err
}

// otherCA issues a certificate with the gateway's subject from a CA the gateway does
// not know.
func otherCA(t *testing.T) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: pki.ServerCommonName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, IPAddresses: nil}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestPeerRefusesNonReplicas attacks the real peer listener (real TLS on loopback):
// only a caller presenting the gateway's own certificate reaches the service.
func TestPeerRefusesNonReplicas(t *testing.T) {
	b, err := pki.Ensure(filepath.Join(t.TempDir(), "pki"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, cliTLS, err := TLS(b)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Listen("127.0.0.1:0", srvTLS, hub.New(hub.Options{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	addr := p.Addr().String()

	// A real replica is served: the hub has no session for sb-1, so NOT_FOUND.
	if err := relayVia(t, addr, cliTLS.Clone()); status.Code(err) != codes.NotFound {
		t.Fatalf("a replica's call: %v, want NotFound from the service", err)
	}
	pin := func(c *tls.Config) *tls.Config { // trust the server as a replica would; vary only what we present
		c = c.Clone()
		c.Certificates = nil
		return c
	}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{
		{"no certificate (a sandbox with only its token)", nil},
		{"the CLI user's certificate (same CA, another key)", &b.Client},
		{"a gateway-named certificate from another CA", ptr(otherCA(t))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := pin(cliTLS)
			if tc.cert != nil {
				c.Certificates = []tls.Certificate{*tc.cert}
			}
			err := relayVia(t, addr, c)
			if err == nil || status.Code(err) == codes.NotFound {
				t.Fatalf("forged peer reached the service: %v", err)
			}
			if status.Code(err) != codes.Unavailable {
				t.Errorf("forged peer: %v, want the handshake to fail (UNAVAILABLE)", err)
			}
		})
	}
	// The client side refuses a server that is not the gateway either.
	impostor, err := Listen("127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{b.Client}, ClientAuth: tls.RequireAnyClientCert}, hub.New(hub.Options{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer impostor.Close()
	if err := relayVia(t, impostor.Addr().String(), cliTLS.Clone()); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not the gateway") {
		t.Errorf("a replica dialing a server with the user's certificate: %v, want a refused handshake", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestParsePeerAddress(t *testing.T) {
	for _, tc := range []struct {
		in         string
		advertised bool
		want       string
		errHas     string
	}{
		{"10.0.0.5:17671", true, "10.0.0.5:17671", ""},
		{"10.0.0.5", true, "10.0.0.5:17672", ""},
		{"gw-0.gw.ns.svc", true, "gw-0.gw.ns.svc:17672", ""},
		{"[::1]:9", true, "[::1]:9", ""},
		{"::1", true, "[::1]:17672", ""},
		{"0.0.0.0:17671", false, "0.0.0.0:17671", ""},
		{":17671", false, ":17671", ""},
		{"0.0.0.0:17671", true, "", "pod IP"},
		{":17671", true, "", "unspecified"},
		{"", true, "", "empty"},
		{"h:99999", true, "", "1-65535"},
		{"h:0", true, "", "1-65535"},
		{"a:b:c", true, "", "brackets"},
		{"user@h:1", true, "", "not an IP address or host name"},
	} {
		got, err := ParsePeerAddress("peer_address", tc.in, tc.advertised)
		if tc.errHas != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errHas) || !strings.Contains(err.Error(), "peer_address") {
				t.Errorf("ParsePeerAddress(%q) = %q, %v; want an error naming the field and %q", tc.in, got, err, tc.errHas)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePeerAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzParsePeerAddress(f *testing.F) {
	for _, s := range []string{"10.0.0.5:17671", "::1", "[::1]:9", ":0", "h:", "a:b:c", "[x]:1", "0.0.0.0"} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, advertised bool) {
		got, err := ParsePeerAddress("peer_address", in, advertised)
		if err != nil {
			return
		}
		// What it accepts is a host:port that parses again to itself.
		again, err := ParsePeerAddress("peer_address", got, advertised)
		if err != nil || again != got {
			t.Fatalf("ParsePeerAddress(%q) = %q, which re-parses to %q, %v", in, got, again, err)
		}
	})
}

func TestHolderFrom(t *testing.T) {
	_, priv, _ := sshKey()
	sum := make([]byte, 32)
	now := time.Now()
	rec := store.SessionHolder{SandboxID: "sb", ReplicaID: "a", PeerAddress: "10.0.0.1:17671", InstanceID: "i", SecretSum: sum,
		HostKey: priv.PublicKey().Marshal(), LeaseExpiresAtMs: now.Add(time.Minute).UnixMilli()}
	h, err := HolderFrom(rec, "b", now)
	if err != nil || !h.Live || h.HostKey == nil || h.Replica != "a" {
		t.Fatalf("HolderFrom = %+v, %v", h, err)
	}
	if h, _ := HolderFrom(rec, "a", now); h.Live {
		t.Error("a replica's own record counts as live elsewhere")
	}
	rec.LeaseExpiresAtMs = now.Add(-time.Second).UnixMilli()
	if h, _ := HolderFrom(rec, "b", now); h.Live {
		t.Error("a record whose lease ended counts as live")
	}
	bad := rec
	bad.SecretSum = sum[:5]
	if _, err := HolderFrom(bad, "b", now); err == nil || !strings.Contains(err.Error(), "secret_sum") {
		t.Errorf("short secret_sum: %v", err)
	}
	bad = rec
	bad.HostKey = []byte("junk")
	if _, err := HolderFrom(bad, "b", now); err == nil || !strings.Contains(err.Error(), "host_key") {
		t.Errorf("junk host_key: %v", err)
	}
}

func sshKey() (ssh.PublicKey, ssh.Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		return nil, nil, err
	}
	return s.PublicKey(), s, nil
}

// FuzzHolderFrom: a stored record (the database is shared by every replica) never
// panics the conversion, and what converts keeps the binding's fields.
func FuzzHolderFrom(f *testing.F) {
	_, s, _ := sshKey()
	f.Add("sb", "a", "i", make([]byte, 32), s.PublicKey().Marshal(), int64(0))
	f.Add("", "", "", []byte{}, []byte("\x00\x00\x00\x07ssh-rsa"), int64(-1))
	f.Fuzz(func(t *testing.T, sandbox, replica, instance string, sum, key []byte, lease int64) {
		h, err := HolderFrom(store.SessionHolder{SandboxID: sandbox, ReplicaID: replica, InstanceID: instance, SecretSum: sum, HostKey: key, LeaseExpiresAtMs: lease}, "self", time.Now())
		if err != nil {
			return
		}
		if h.SandboxID != sandbox || h.InstanceID != instance || string(h.SecretSum[:]) != string(sum) {
			t.Fatalf("HolderFrom changed the binding: %+v", h)
		}
	})
}
