package credentials

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// CA is a per-sandbox certificate authority: the agent trusts it (through the bundle
// written by WriteBundle and egress.ChildEnv), and the proxy mints leaf certificates
// with it for the TLS tunnels it terminates. Its key lives only in the supervisor's
// memory.
type CA struct {
	cert    *x509.Certificate
	certDER []byte
	key     *ecdsa.PrivateKey

	mu    sync.Mutex
	leafs map[string]*tls.Certificate
}

// caLifetime bounds how long a leaked bundle is worth anything; a sandbox living
// longer gets a new CA on supervisor restart.
const caLifetime = 90 * 24 * time.Hour

// NewCA creates a CA named after the sandbox; "" names none (a CA made ahead, before
// the sandbox is known).
func NewCA(sandbox string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("credentials: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: strings.TrimSpace("openshell sandbox CA " + sandbox), Organization: []string{"openshell"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("credentials: self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, certDER: der, key: key, leafs: map[string]*tls.Certificate{}}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// CertPEM is the CA certificate (never the key).
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.certDER})
}

// Pool is a pool holding only this CA (for tests and in-process clients).
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// systemBundles are where Debian, Fedora/RHEL, Alpine and SUSE keep their roots.
var systemBundles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/cert.pem",
	"/etc/ssl/ca-bundle.pem",
}

// SystemRoots returns the image's bundle of public roots, the first of systemBundles
// found (nil when there is none).
func SystemRoots() []byte {
	for _, f := range systemBundles {
		if b, err := os.ReadFile(f); err == nil {
			return b
		}
	}
	return nil
}

// WriteBundle writes the system roots (when found) followed by the CA certificate
// to path, mode 0644: tools told to use SSL_CERT_FILE replace their trust store with
// it, so it must keep trusting the public roots as well. It goes to a temporary file
// beside path, renamed over it: readers see the old bundle or the new, never a part.
// No sync: the bundle is made anew, with a new CA, at every start of the supervisor,
// and under emulation the guest's disk flushes took 40-170 ms of a pooled sandbox's
// start.
func (ca *CA) WriteBundle(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("credentials: CA bundle dir: %w", err)
	}
	b := SystemRoots()
	if len(b) > 0 && !bytes.HasSuffix(b, []byte("\n")) {
		b = append(b, '\n')
	}
	b = append(b, ca.CertPEM()...)
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".new-*")
	if err != nil {
		return fmt.Errorf("credentials: CA bundle: %w", err)
	}
	err = f.Chmod(0o644)
	if err == nil {
		_, err = f.Write(b)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("credentials: CA bundle: %w", err)
	}
	return nil
}

// TLSConfig presents, for any SNI, a leaf certificate signed by the CA (cached per
// name).
func (ca *CA) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			name := hello.ServerName
			if name == "" {
				// No SNI (an IP literal): name the address the client connected to.
				if a, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
					name = a.IP.String()
				}
			}
			return ca.Leaf(name)
		},
	}
}

// Leaf returns the cached certificate for name, minting it when missing or close to
// expiry.
func (ca *CA) Leaf(name string) (*tls.Certificate, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return nil, errors.New("credentials: no server name for the leaf certificate")
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if c, ok := ca.leafs[name]; ok && time.Until(c.Leaf.NotAfter) > time.Hour {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(7 * 24 * time.Hour)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("credentials: leaf for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{Certificate: [][]byte{der, ca.certDER}, PrivateKey: key, Leaf: leaf}
	if len(ca.leafs) > 4096 { // bound memory against an agent enumerating names
		clear(ca.leafs)
	}
	ca.leafs[name] = c
	return c, nil
}
