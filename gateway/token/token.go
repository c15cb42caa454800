// Package token mints and verifies sandbox identity tokens: EdDSA (Ed25519) JWTs that
// a supervisor presents to the gateway in place of a client certificate. A token names
// exactly one sandbox (sub = spiffe://openshell/sandbox/<id>, plus a sandbox_id claim)
// and one gateway (iss = aud = openshell-gateway:<gatewayID>), so a token from one
// gateway is useless at another even if they shared a key.
//
// Tokens are long-lived (DefaultTTL, one year) on purpose: a sandbox may run for
// months, and its supervisor re-dials the gateway with the token it was started with
// (it has no channel to fetch a new one while disconnected, and a VM's token sits in
// its bootstrap config). Expiry is therefore a backstop, not the revocation
// mechanism: the gateway accepts a token only for a sandbox that still exists in its
// store, so deleting a sandbox revokes its token, and replacing the signing key
// revokes all of them.
package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultTTL is the lifetime of sandbox tokens; see the package comment for why it is
// long.
const DefaultTTL = 365 * 24 * time.Hour

// SubjectPrefix prefixes the sandbox id in the sub claim.
const SubjectPrefix = "spiffe://openshell/sandbox/"

// MaxTokenLen bounds what Verify will parse; real tokens are ~400 bytes.
const MaxTokenLen = 8 << 10

// leeway tolerates clock differences between the host and a sandbox VM.
const leeway = time.Minute

var (
	// ErrInvalid is wrapped by every Verify failure: the caller answers
	// Unauthenticated without distinguishing causes to the client.
	ErrInvalid = errors.New("invalid sandbox token")

	sandboxIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	gatewayIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
)

// Claims are the token's claims.
type Claims struct {
	SandboxID string `json:"sandbox_id"`
	jwt.RegisteredClaims
}

// Issuer holds the gateway's signing key.
type Issuer struct {
	key      ed25519.PrivateKey
	pub      ed25519.PublicKey
	kid      string
	audience string
	now      func() time.Time // tests move the clock
}

// NewIssuer loads the Ed25519 key at keyPath (PKCS#8 PEM), creating it (mode 0600,
// parent directory 0700) on first use, for the gateway named gatewayID. Several
// processes starting at once agree on one key.
func NewIssuer(keyPath, gatewayID string) (*Issuer, error) {
	if !gatewayIDRe.MatchString(gatewayID) {
		return nil, fmt.Errorf("token: gateway id %q: want 1-128 characters of [A-Za-z0-9._:-]", gatewayID)
	}
	if keyPath == "" {
		return nil, errors.New("token: empty signing key path")
	}
	key, err := loadKey(keyPath)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = createKey(keyPath)
	}
	if err != nil {
		return nil, err
	}
	pub := key.Public().(ed25519.PublicKey)
	return &Issuer{
		key:      key,
		pub:      pub,
		kid:      thumbprint(pub),
		audience: "openshell-gateway:" + gatewayID,
		now:      time.Now,
	}, nil
}

func loadKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err // fs.ErrNotExist is handled by the caller
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("token: %s is not a PEM private key; move it away to have a new key created (existing sandbox tokens will stop working)", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("token: parse %s: %w", path, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("token: %s holds a %T, want an Ed25519 key", path, k)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("token: %s is readable by others and chmod 0600 failed: %w", path, err)
		}
	}
	return key, nil
}

// createKey writes a new key to a temporary file and hard-links it into place: link
// fails if another process got there first, and then its key is used instead.
func createKey(path string) (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("token: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("token: encode key: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("token: create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("token: write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	werr := f.Chmod(0o600)
	if werr == nil {
		werr = pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("token: write %s: %w", path, werr)
	}
	if err := os.Link(f.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadKey(path)
		}
		return nil, fmt.Errorf("token: install %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return key, nil
}

// thumbprint is the RFC 7638 JWK thumbprint of an Ed25519 public key.
func thumbprint(pub ed25519.PublicKey) string {
	// Members in lexicographic order, no whitespace, as RFC 7638 requires.
	canon := `{"crv":"Ed25519","kty":"OKP","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}`
	sum := sha256.Sum256([]byte(canon))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// KeyID returns the kid put in every token's header (the key's JWK thumbprint).
func (i *Issuer) KeyID() string { return i.kid }

// Audience returns the iss/aud value, "openshell-gateway:<gatewayID>".
func (i *Issuer) Audience() string { return i.audience }

// Mint returns a token for sandboxID valid for ttl (0 means DefaultTTL).
func (i *Issuer) Mint(sandboxID string, ttl time.Duration) (string, error) {
	if !sandboxIDRe.MatchString(sandboxID) {
		return "", fmt.Errorf("token: sandbox id %q: want 1-128 characters of [A-Za-z0-9._-]", sandboxID)
	}
	switch {
	case ttl == 0:
		ttl = DefaultTTL
	case ttl < 0:
		return "", fmt.Errorf("token: negative ttl %v for sandbox %s", ttl, sandboxID)
	}
	now := i.now()
	claims := Claims{
		SandboxID: sandboxID,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   SubjectPrefix + sandboxID,
			Issuer:    i.audience,
			Audience:  jwt.ClaimStrings{i.audience},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
	}
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	t.Header["kid"] = i.kid
	s, err := t.SignedString(i.key)
	if err != nil {
		return "", fmt.Errorf("token: sign token for sandbox %s: %w", sandboxID, err)
	}
	return s, nil
}

// Verify checks tok's signature (EdDSA with this issuer's key only; "none", HMAC and
// every other algorithm are refused before any key is used), kid, issuer, audience,
// expiry and subject, and returns the sandbox id. Errors wrap ErrInvalid.
func (i *Issuer) Verify(tok string) (sandboxID string, err error) {
	if len(tok) > MaxTokenLen {
		return "", fmt.Errorf("token of %d bytes exceeds %d: %w", len(tok), MaxTokenLen, ErrInvalid)
	}
	var claims Claims
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}),
		jwt.WithIssuer(i.audience),
		jwt.WithAudience(i.audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(i.now),
		jwt.WithStrictDecoding(),
	)
	_, err = parser.ParseWithClaims(tok, &claims, func(t *jwt.Token) (any, error) {
		if _, ok := t.Method.(*jwt.SigningMethodEd25519); !ok { // WithValidMethods already checks; keep the key away from any other method
			return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
		}
		if kid, _ := t.Header["kid"].(string); kid != i.kid {
			return nil, fmt.Errorf("unknown key id %q", kid)
		}
		return i.pub, nil
	})
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if !sandboxIDRe.MatchString(claims.SandboxID) {
		return "", fmt.Errorf("bad sandbox_id claim %q: %w", claims.SandboxID, ErrInvalid)
	}
	if claims.Subject != SubjectPrefix+claims.SandboxID {
		return "", fmt.Errorf("subject %q does not name sandbox %s: %w", claims.Subject, claims.SandboxID, ErrInvalid)
	}
	return claims.SandboxID, nil
}

// JWKS returns the public key as a JSON Web Key Set, for anything that verifies
// sandbox tokens without the private key.
func (i *Issuer) JWKS() []byte {
	type jwk struct {
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		X   string `json:"x"`
		Kid string `json:"kid"`
		Alg string `json:"alg"`
		Use string `json:"use"`
	}
	b, _ := json.Marshal(struct {
		Keys []jwk `json:"keys"`
	}{[]jwk{{Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(i.pub), Kid: i.kid, Alg: "EdDSA", Use: "sig"}}})
	return b
}
