package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openshell/openshell/internal/testenv"
)

// policyTestImage is the project's Debian base image (curl, python3) imported into
// dockerd: the policy tests need real clients the proxy can tell apart.
const policyTestImage = "openshell-test/policy:latest"

// baseImageDir is where scripts/build-base-image.sh leaves the OCI layout.
const baseImageDir = "/var/lib/openshell/images/base"

// ensurePolicyImage imports the base image's single layer into dockerd when the
// image is missing.
func ensurePolicyImage(t *testing.T) {
	t.Helper()
	defer importToKubeNode(t, policyTestImage)
	if engineCmd("image", "inspect", policyTestImage).Run() == nil {
		return
	}
	readJSON := func(p string, v any) {
		b, err := os.ReadFile(p)
		testenv.Require(t, err == nil, "the base image is missing ("+p+"): run scripts/build-base-image.sh")
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	blob := func(d string) string {
		return filepath.Join(baseImageDir, "blobs", strings.Replace(d, ":", "/", 1))
	}
	var index struct{ Manifests []struct{ Digest string } }
	readJSON(filepath.Join(baseImageDir, "index.json"), &index)
	if len(index.Manifests) == 0 {
		t.Fatalf("%s/index.json lists no manifest", baseImageDir)
	}
	var manifest struct{ Layers []struct{ Digest string } }
	readJSON(blob(index.Manifests[0].Digest), &manifest)
	if len(manifest.Layers) != 1 {
		t.Fatalf("base image has %d layers; this import handles one", len(manifest.Layers))
	}
	out, err := engineCmd("import", "--change", `CMD ["/bin/bash"]`,
		"--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		blob(manifest.Layers[0].Digest), policyTestImage).CombinedOutput()
	if err != nil {
		t.Fatalf("docker import of the base image: %v\n%s", err, out)
	}
}

// countingServer is an HTTP(S) server on all host addresses (the sandbox reaches it
// through the docker bridge) that counts accepted TCP connections and remembers the
// last Authorization header it received.
type countingServer struct {
	ln    net.Listener
	srv   *http.Server
	conns atomic.Int64
	mu    sync.Mutex
	auth  string
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func startCountingServer(t *testing.T, name string, cert *tls.Certificate) *countingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &countingServer{}
	s.ln = countingListener{ln, &s.conns}
	if cert != nil {
		s.ln = tls.NewListener(s.ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
	}
	s.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.auth = r.Header.Get("Authorization")
		s.mu.Unlock()
		fmt.Fprintf(w, "hello-%s\n", name)
	})}
	go s.srv.Serve(s.ln)
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *countingServer) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *countingServer) lastAuth() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.auth
}

// testCA makes a CA and a server certificate for host (PEM of the CA returned).
func testCA(t *testing.T, host string) (*tls.Certificate, []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "openshell e2e test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// writePolicy writes doc to dir/policy.yaml and returns its path.
func writePolicy(t *testing.T, dir, doc string) string {
	t.Helper()
	f := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}
