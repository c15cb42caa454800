package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEnsureCreatesThenReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	b1, err := Ensure(dir, []string{"gw.example.com", "10.1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("dir mode %v, want 0700", m)
	}
	for _, f := range []string{CAKeyFile, ServerKeyFile, ClientKeyFile} {
		if m := mode(t, filepath.Join(dir, f)); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, m)
		}
	}
	for _, f := range []string{CACertFile, ServerCertFile, ClientCertFile} {
		if m := mode(t, filepath.Join(dir, f)); m&0o077 != 0o044 {
			t.Errorf("%s mode %v, want 0644", f, m)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*.tmp-*")); len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
	if !bytes.Equal(b1.CAPEM, read(t, filepath.Join(dir, CACertFile))) {
		t.Errorf("Bundle.CAPEM differs from ca.crt")
	}

	srv := b1.Server.Leaf
	for _, h := range []string{"localhost", "gw.example.com", SandboxHostName} {
		if !slices.Contains(srv.DNSNames, h) {
			t.Errorf("server certificate DNS names %v lack %s", srv.DNSNames, h)
		}
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3"} {
		if !slices.ContainsFunc(srv.IPAddresses, net.ParseIP(ip).Equal) {
			t.Errorf("server certificate IPs %v lack %s", srv.IPAddresses, ip)
		}
	}
	if cn := b1.Client.Leaf.Subject.CommonName; cn != ClientCommonName {
		t.Errorf("client CN %q, want %q", cn, ClientCommonName)
	}
	if !b1.CA.IsCA || b1.CA.NotAfter.Sub(b1.CA.NotBefore).Hours() < 9*365*24 {
		t.Errorf("CA: IsCA=%v validity %v; want a CA valid ~10 years", b1.CA.IsCA, b1.CA.NotAfter.Sub(b1.CA.NotBefore))
	}

	before := map[string][]byte{}
	for _, f := range []string{CACertFile, CAKeyFile, ServerCertFile, ServerKeyFile, ClientCertFile, ClientKeyFile} {
		before[f] = read(t, filepath.Join(dir, f))
	}
	// Same hosts in another spelling: nothing is re-issued.
	b2, err := Ensure(dir, []string{"GW.example.com", "[10.1.2.3]", ""})
	if err != nil {
		t.Fatal(err)
	}
	for f, data := range before {
		if !bytes.Equal(data, read(t, filepath.Join(dir, f))) {
			t.Errorf("second Ensure rewrote %s", f)
		}
	}
	if !b2.CA.Equal(b1.CA) || !b2.Server.Leaf.Equal(b1.Server.Leaf) || !b2.Client.Leaf.Equal(b1.Client.Leaf) {
		t.Errorf("second Ensure returned different certificates")
	}
}

func TestEnsureAddsHostKeepsCA(t *testing.T) {
	dir := t.TempDir()
	b1, err := Ensure(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := Ensure(dir, []string{"new.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if !b2.CA.Equal(b1.CA) || !b2.Client.Leaf.Equal(b1.Client.Leaf) {
		t.Fatal("adding a host replaced the CA or the client certificate")
	}
	if b2.Server.Leaf.Equal(b1.Server.Leaf) || !slices.Contains(b2.Server.Leaf.DNSNames, "new.example.com") {
		t.Fatalf("server certificate not re-issued with the new host: %v", b2.Server.Leaf.DNSNames)
	}
	if err := b2.Server.Leaf.VerifyHostname("new.example.com"); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureRejectsBadHost(t *testing.T) {
	for _, h := range []string{"host:8080", "https://x", "a b"} {
		if _, err := Ensure(t.TempDir(), []string{h}); err == nil {
			t.Errorf("Ensure(host %q) succeeded", h)
		}
	}
}

// TestEnsureRepairs simulates interrupted or damaged state.
func TestEnsureRepairs(t *testing.T) {
	t.Run("missing server key re-issues the server pair only", func(t *testing.T) {
		dir := t.TempDir()
		b1, err := Ensure(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(dir, ServerKeyFile))
		b2, err := Ensure(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !b2.CA.Equal(b1.CA) || b2.Server.Leaf.Equal(b1.Server.Leaf) || !b2.Client.Leaf.Equal(b1.Client.Leaf) {
			t.Fatal("want same CA and client, new server certificate")
		}
	})
	t.Run("key not matching its certificate", func(t *testing.T) {
		dir := t.TempDir()
		b1, err := Ensure(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The client key overwritten with the server key: as if a crash hit mid-rotation.
		if err := os.WriteFile(filepath.Join(dir, ClientKeyFile), read(t, filepath.Join(dir, ServerKeyFile)), 0o600); err != nil {
			t.Fatal(err)
		}
		b2, err := Ensure(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b2.Client.Leaf.Equal(b1.Client.Leaf) || !b2.CA.Equal(b1.CA) {
			t.Fatal("client pair not re-issued under the same CA")
		}
	})
	t.Run("truncated CA key regenerates everything", func(t *testing.T) {
		dir := t.TempDir()
		b1, err := Ensure(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, CAKeyFile), []byte("-----BEGIN PRIV"), 0o600); err != nil {
			t.Fatal(err)
		}
		b2, err := Ensure(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b2.CA.Equal(b1.CA) || b2.Server.Leaf.Equal(b1.Server.Leaf) || b2.Client.Leaf.Equal(b1.Client.Leaf) {
			t.Fatal("want a new CA and new leaves")
		}
		if _, err := b2.Server.Leaf.Verify(x509.VerifyOptions{Roots: b2.CertPool()}); err != nil {
			t.Fatalf("new server certificate does not chain to the new CA: %v", err)
		}
	})
}

func TestEnsureConcurrent(t *testing.T) {
	dir := t.TempDir()
	const n = 6
	bundles := make([]*Bundle, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); bundles[i], errs[i] = Ensure(dir, nil) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, b := range bundles[1:] {
		if !b.CA.Equal(bundles[0].CA) {
			t.Fatal("concurrent Ensure calls created different CAs")
		}
	}
	if _, err := LoadClient(dir); err != nil { // files on disk are one consistent set
		t.Fatal(err)
	}
}

func TestCertificateChains(t *testing.T) {
	b, err := Ensure(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	roots := b.CertPool()
	if _, err := b.Server.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: SandboxHostName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("server certificate does not verify for %s: %v", SandboxHostName, err)
	}
	if _, err := b.Client.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify for client auth: %v", err)
	}
	// Each leaf is good for its role only: a stolen server key cannot log in as a user.
	if _, err := b.Server.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Errorf("server certificate verifies for client auth")
	}
	if _, err := b.Client.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Errorf("client certificate verifies for server auth")
	}
	other, err := Ensure(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Server.Leaf.Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Errorf("another gateway's certificate verifies against this CA")
	}
}

// serve runs a real TLS server that answers each connection with whether the peer
// presented a verified user certificate.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				cs := tc.ConnectionState()
				cn, ok := VerifiedUser(&cs)
				fmt.Fprintf(c, "user=%v cn=%s", ok, cn)
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(addr string, cfg *tls.Config) (string, error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestTLS(t *testing.T) {
	b, err := Ensure(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, b.ServerTLSConfig())
	_, port, _ := net.SplitHostPort(addr)

	t.Run("user with certificate", func(t *testing.T) {
		got, err := dial(addr, b.ClientTLSConfig())
		if err != nil || got != "user=true cn="+ClientCommonName {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("supervisor without certificate", func(t *testing.T) {
		cfg := &tls.Config{RootCAs: b.CertPool(), ServerName: SandboxHostName, MinVersion: tls.VersionTLS13}
		got, err := dial(addr, cfg)
		if err != nil || got != "user=false cn=" {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("localhost name", func(t *testing.T) {
		got, err := dial(net.JoinHostPort("localhost", port), b.ClientTLSConfig())
		if err != nil || got != "user=true cn="+ClientCommonName {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("certificate from another CA is refused", func(t *testing.T) {
		other, err := Ensure(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := b.ClientTLSConfig()
		// Force-send it: Go's client would otherwise withhold a certificate that the
		// server's CertificateRequest does not list an issuer for.
		cfg.Certificates = nil
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &other.Client, nil }
		if got, err := dial(addr, cfg); err == nil {
			t.Fatalf("foreign client certificate accepted: %q", got)
		}
	})
	t.Run("server certificate as client certificate is refused", func(t *testing.T) {
		cfg := b.ClientTLSConfig()
		cfg.Certificates = []tls.Certificate{b.Server}
		if got, err := dial(addr, cfg); err == nil {
			t.Fatalf("server certificate accepted as a client certificate: %q", got)
		}
	})
	t.Run("client not trusting the CA", func(t *testing.T) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if _, err := dial(addr, cfg); err == nil {
			t.Fatal("handshake succeeded without trusting the gateway CA")
		}
	})
	t.Run("TLS 1.2 refused", func(t *testing.T) {
		cfg := b.ClientTLSConfig()
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		if _, err := dial(addr, cfg); err == nil {
			t.Fatal("TLS 1.2 handshake succeeded")
		}
	})
}

func TestWriteClientDirAndLoadClient(t *testing.T) {
	b, err := Ensure(filepath.Join(t.TempDir(), "pki"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cli := filepath.Join(t.TempDir(), "gateways", "local")
	if err := WriteClientDir(b, cli); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, cli); m != 0o700 {
		t.Errorf("client dir mode %v", m)
	}
	if m := mode(t, filepath.Join(cli, ClientKeyFile)); m != 0o600 {
		t.Errorf("client key mode %v", m)
	}
	for _, f := range []string{CAKeyFile, ServerKeyFile, ServerCertFile} {
		if _, err := os.Stat(filepath.Join(cli, f)); err == nil {
			t.Errorf("client dir holds %s", f)
		}
	}
	lb, err := LoadClient(cli)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, b.ServerTLSConfig())
	if got, err := dial(addr, lb.ClientTLSConfig()); err != nil || got != "user=true cn="+ClientCommonName {
		t.Fatalf("loaded client bundle: %q, %v", got, err)
	}
	// A loaded bundle can be copied on (e.g. to another profile).
	if err := WriteClientDir(lb, filepath.Join(t.TempDir(), "copy")); err != nil {
		t.Fatal(err)
	}

	// A client dir whose CA was replaced (gateway re-created) fails clearly.
	other, err := Ensure(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cli, CACertFile), other.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadClient(cli); err == nil {
		t.Fatal("LoadClient accepted a client certificate from another CA")
	}
	if _, err := LoadClient(t.TempDir()); err == nil {
		t.Fatal("LoadClient of an empty dir succeeded")
	}
	if err := WriteClientDir(&Bundle{}, t.TempDir()); err == nil {
		t.Fatal("WriteClientDir of an empty bundle succeeded")
	}
}

func TestEnsureDoesNotOverwriteUnreadable(t *testing.T) {
	// A read error other than "missing" (here EISDIR; permission denied in real life,
	// which root cannot reproduce) must fail Ensure rather than replace the CA.
	dir := t.TempDir()
	if _, err := Ensure(dir, nil); err != nil {
		t.Fatal(err)
	}
	caCert := read(t, filepath.Join(dir, CACertFile))
	key := filepath.Join(dir, CAKeyFile)
	if err := os.Rename(key, key+".saved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(key, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Ensure(dir, nil); err == nil {
		t.Fatal("Ensure succeeded with an unreadable CA key")
	}
	if !bytes.Equal(caCert, read(t, filepath.Join(dir, CACertFile))) {
		t.Fatal("Ensure replaced the CA despite an unreadable key")
	}
}
