// Package pki creates and loads the gateway's mTLS material: a private CA, the
// gateway's server certificate and the CLI user's client certificate. Users
// authenticate with the client certificate; sandbox supervisors have no client
// certificate (they present a sandbox JWT instead), so the server requests client
// certificates but accepts connections without one, and the gateway decides per RPC.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gofrs/flock"

	"github.com/openshell/openshell/internal/atomicfile"
)

// File names inside a PKI directory (gateway) or a CLI gateway directory (client).
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
	ClientCertFile = "client.crt"
	ClientKeyFile  = "client.key"
)

const (
	// ClientCommonName is the subject CN of the CLI user's certificate.
	ClientCommonName = "openshell-user"
	// ServerCommonName is the subject CN of the gateway's certificate.
	ServerCommonName = "openshell-gateway"
	// SandboxHostName is the name sandboxes use to reach the gateway; it is always in
	// the server certificate.
	SandboxHostName = "host.openshell.internal"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 5 * 365 * 24 * time.Hour
	// renewBefore: Ensure re-issues a leaf certificate this close to its expiry, so a
	// long-running installation never serves an expired certificate after a restart.
	renewBefore = 30 * 24 * time.Hour
	// backdate tolerates clocks (e.g. a freshly booted VM) running behind the host.
	backdate = time.Hour
)

// DefaultHosts are always in the server certificate.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1", SandboxHostName}

// Bundle is loaded mTLS material. A bundle from Ensure has everything; one from
// LoadClient has only the CA certificate and the client pair.
type Bundle struct {
	// CA is the CA certificate; CAPEM is the same in PEM, for handing to supervisors.
	CA    *x509.Certificate
	CAPEM []byte
	// Server is the gateway's certificate and key (empty in a client bundle).
	Server tls.Certificate
	// Client is the CLI user's certificate and key.
	Client tls.Certificate

	caKey                       crypto.Signer
	clientCertPEM, clientKeyPEM []byte
}

// CertPool returns a pool holding only the CA.
func (b *Bundle) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(b.CA)
	return p
}

// ServerTLSConfig returns a TLS 1.3 server config presenting the server certificate.
// Client certificates are requested and, when given, must chain to the CA; a
// connection without one is accepted (supervisors authenticate with a JWT), so the
// gateway must check VerifiedUser before serving a user RPC.
func (b *Bundle) ServerTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.Server},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    b.CertPool(),
	}
}

// ClientTLSConfig returns a TLS 1.3 client config that trusts only the CA and presents
// the client certificate. ServerName is left empty: tls.Dial and gRPC fill it from the
// address dialed (any of the server certificate's hosts).
func (b *Bundle) ClientTLSConfig() *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    b.CertPool(),
	}
	if b.Client.Certificate != nil {
		cfg.Certificates = []tls.Certificate{b.Client}
	}
	return cfg
}

// VerifiedUser reports the CN of a client certificate that the TLS handshake verified
// against the CA. ok is false when the peer sent no certificate (a supervisor) or the
// verified certificate is not the user's.
func VerifiedUser(cs *tls.ConnectionState) (cn string, ok bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := cs.VerifiedChains[0][0]
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return "", false
	}
	return leaf.Subject.CommonName, true
}

// Ensure returns the PKI in dir, creating what is missing: on first use a CA, server
// certificate and client certificate; afterwards it reuses them. The server
// certificate covers hosts plus DefaultHosts; if a requested host is missing from it,
// or a leaf is near expiry or does not match its key or the CA, that leaf is re-issued
// under the same CA (clients keep working). Only a missing or broken CA causes a new
// CA and new leaves. Concurrent callers (several processes) are serialized by a lock
// file in dir.
func Ensure(dir string, hosts []string) (*Bundle, error) {
	sans, err := normalizeHosts(hosts)
	if err != nil {
		return nil, err
	}
	if err := mkdirPrivate(dir); err != nil {
		return nil, err
	}
	lock := flock.New(filepath.Join(dir, ".lock"))
	if err := lock.Lock(); err != nil {
		return nil, fmt.Errorf("pki: lock %s: %w", dir, err)
	}
	defer lock.Unlock()

	b := &Bundle{}
	caCert, caKey, caCertPEM, _, err := loadPair(dir, CACertFile, CAKeyFile)
	if err == nil {
		err = checkCA(caCert)
	}
	if ioErr(err) {
		return nil, fmt.Errorf("pki: read CA in %s: %w", dir, err)
	}
	fresh := false
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			// Existing clients stop trusting this gateway; say why.
			slog.Warn("pki: replacing unusable CA; clients must fetch the new ca.crt", "dir", dir, "reason", err)
		}
		if caCert, caKey, caCertPEM, err = newCA(dir); err != nil {
			return nil, err
		}
		fresh = true
	}
	b.CA, b.CAPEM, b.caKey = caCert, caCertPEM, caKey

	serverTmpl := func() *x509.Certificate {
		t := leafTemplate(ServerCommonName, x509.ExtKeyUsageServerAuth)
		for _, h := range sans {
			if ip := net.ParseIP(h); ip != nil {
				t.IPAddresses = append(t.IPAddresses, ip)
			} else {
				t.DNSNames = append(t.DNSNames, h)
			}
		}
		return t
	}
	serverOK := func(c *x509.Certificate) error {
		for _, h := range sans {
			ip := net.ParseIP(h)
			if ip != nil && !slices.ContainsFunc(c.IPAddresses, ip.Equal) || ip == nil && !slices.Contains(c.DNSNames, h) {
				return fmt.Errorf("host %s not in the certificate", h)
			}
		}
		return nil
	}
	if b.Server, _, _, err = b.ensureLeaf(dir, ServerCertFile, ServerKeyFile, fresh, x509.ExtKeyUsageServerAuth, serverTmpl, serverOK); err != nil {
		return nil, err
	}
	clientTmpl := func() *x509.Certificate { return leafTemplate(ClientCommonName, x509.ExtKeyUsageClientAuth) }
	if b.Client, b.clientCertPEM, b.clientKeyPEM, err = b.ensureLeaf(dir, ClientCertFile, ClientKeyFile, fresh, x509.ExtKeyUsageClientAuth, clientTmpl, nil); err != nil {
		return nil, err
	}
	return b, nil
}

// ensureLeaf loads a leaf pair, or issues a new one when forced, missing, broken, not
// issued by the CA, near expiry, or rejected by extra.
func (b *Bundle) ensureLeaf(dir, certFile, keyFile string, force bool, usage x509.ExtKeyUsage,
	tmpl func() *x509.Certificate, extra func(*x509.Certificate) error,
) (tls.Certificate, []byte, []byte, error) {
	if !force {
		cert, key, certPEM, keyPEM, err := loadPair(dir, certFile, keyFile)
		if err == nil {
			err = b.checkLeaf(cert, usage)
		}
		if err == nil && extra != nil {
			err = extra(cert)
		}
		if err == nil {
			return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, certPEM, keyPEM, nil
		}
		if ioErr(err) {
			return tls.Certificate{}, nil, nil, fmt.Errorf("pki: read %s in %s: %w", certFile, dir, err)
		}
	}
	certPEM, keyPEM, err := b.issue(tmpl())
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	// Key first: if interrupted, the next run finds a cert that does not match the key
	// and re-issues both.
	if err := atomicfile.WriteFile(filepath.Join(dir, keyFile), keyPEM, 0o600); err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, certFile), certPEM, 0o644); err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, nil, nil, fmt.Errorf("pki: load new %s: %w", certFile, err)
	}
	return pair, certPEM, keyPEM, nil
}

func (b *Bundle) checkLeaf(c *x509.Certificate, usage x509.ExtKeyUsage) error {
	if _, err := c.Verify(x509.VerifyOptions{Roots: b.CertPool(), KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return err
	}
	if time.Until(c.NotAfter) < renewBefore {
		return errors.New("expires soon")
	}
	return nil
}

// ioErr reports a read failure other than a missing file (e.g. permission denied):
// such a file may be fine, so it must not be overwritten.
func ioErr(err error) bool {
	var pe *fs.PathError
	return errors.As(err, &pe) && !errors.Is(err, fs.ErrNotExist)
}

func checkCA(c *x509.Certificate) error {
	if !c.IsCA || !c.BasicConstraintsValid {
		return errors.New("not a CA certificate")
	}
	if time.Until(c.NotAfter) < renewBefore {
		return errors.New("CA expires soon")
	}
	return nil
}

// CheckHost says whether h can name the gateway in its server certificate: a DNS
// name or an IP address, without port or scheme.
func CheckHost(h string) error {
	if h == "" || strings.ContainsAny(h, " /:,") && net.ParseIP(h) == nil {
		return fmt.Errorf("host %q is neither a DNS name nor an IP address; pass host names without port or scheme", h)
	}
	return nil
}

func normalizeHosts(hosts []string) ([]string, error) {
	out := slices.Clone(DefaultHosts)
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if h == "" {
			continue
		}
		if err := CheckHost(h); err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		if ip := net.ParseIP(h); ip != nil {
			h = ip.String()
		} else {
			h = strings.ToLower(h)
		}
		if !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out, nil
}

func newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func skid(pub crypto.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	return sum[:20]
}

func newCA(dir string) (*x509.Certificate, crypto.Signer, []byte, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, nil, err
	}
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{Organization: []string{"openshell"}, CommonName: "openshell gateway CA " + hex.EncodeToString(id)},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		SubjectKeyId:          skid(key.Public()),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := atomicfile.WriteFile(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return nil, nil, nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, CACertFile), certPEM, 0o644); err != nil {
		return nil, nil, nil, err
	}
	return cert, key, certPEM, nil
}

func leafTemplate(cn string, usage x509.ExtKeyUsage) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"openshell"}, CommonName: cn},
		NotBefore:   now.Add(-backdate),
		NotAfter:    now.Add(leafValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
}

func (b *Bundle) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, nil, err
	}
	tmpl.SubjectKeyId = skid(key.Public())
	if tmpl.NotAfter.After(b.CA.NotAfter) {
		tmpl.NotAfter = b.CA.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.CA, key.Public(), b.caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue certificate for %s: %w", tmpl.Subject.CommonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// loadPair reads a certificate and its private key and checks that they belong
// together.
func loadPair(dir, certFile, keyFile string) (cert *x509.Certificate, key crypto.Signer, certPEM, keyPEM []byte, err error) {
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	if certPEM, err = os.ReadFile(certPath); err != nil {
		return nil, nil, nil, nil, err
	}
	if cert, err = parseCert(certPEM); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("pki: %s: %w", certPath, err)
	}
	if keyPEM, err = os.ReadFile(keyPath); err != nil {
		return nil, nil, nil, nil, err
	}
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		return nil, nil, nil, nil, fmt.Errorf("pki: %s: no PEM block", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("pki: %s: %w", keyPath, err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, nil, nil, fmt.Errorf("pki: %s: unsupported key type %T", keyPath, k)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if eq, ok := key.Public().(equaler); !ok || !eq.Equal(cert.PublicKey) {
		return nil, nil, nil, nil, fmt.Errorf("pki: %s does not match %s", keyPath, certPath)
	}
	return cert, key, certPEM, keyPEM, nil
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// LoadClient loads a CLI gateway directory (ca.crt, client.crt, client.key), as
// written by WriteClientDir.
func LoadClient(dir string) (*Bundle, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: load gateway CA: %w; re-run `openshell gateway start` or copy the gateway's client files into %s", err, dir)
	}
	ca, err := parseCert(caPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", filepath.Join(dir, CACertFile), err)
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, ClientCertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: load client certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, ClientKeyFile))
	if err != nil {
		return nil, fmt.Errorf("pki: load client key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: client certificate and key in %s: %w", dir, err)
	}
	b := &Bundle{CA: ca, CAPEM: caPEM, Client: pair, clientCertPEM: certPEM, clientKeyPEM: keyPEM}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: b.CertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("pki: client certificate in %s is not valid for this CA (stale copy from an older gateway?): %w", dir, err)
	}
	return b, nil
}

// WriteClientDir writes the CA certificate and the client pair into dir (created
// 0700; the key 0600), for the CLI's ~/.config/openshell/gateways/<name>/.
func WriteClientDir(b *Bundle, dir string) error {
	if b == nil || len(b.CAPEM) == 0 || len(b.clientCertPEM) == 0 || len(b.clientKeyPEM) == 0 {
		return errors.New("pki: bundle has no client certificate; use the bundle returned by Ensure or LoadClient")
	}
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{ClientKeyFile, b.clientKeyPEM, 0o600},
		{ClientCertFile, b.clientCertPEM, 0o644},
		{CACertFile, b.CAPEM, 0o644},
	} {
		if err := atomicfile.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func mkdirPrivate(dir string) error {
	if dir == "" {
		return errors.New("pki: empty directory path")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil { // it holds private keys
		return fmt.Errorf("pki: chmod 0700 %s: %w", dir, err)
	}
	return nil
}
