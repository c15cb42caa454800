package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func newIssuer(t testing.TB, gatewayID string) *Issuer {
	t.Helper()
	i, err := NewIssuer(filepath.Join(t.TempDir(), "keys", "sandbox-jwt.key"), gatewayID)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

func decodeSegment(t *testing.T, seg string) map[string]any {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMintVerify(t *testing.T) {
	iss := newIssuer(t, "gw1")
	before := time.Now().Unix()
	tok, err := iss.Mint("3f2a-sb_1.x", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, err := iss.Verify(tok)
	if err != nil || id != "3f2a-sb_1.x" {
		t.Fatalf("Verify = %q, %v", id, err)
	}

	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	hdr := decodeSegment(t, parts[0])
	if hdr["alg"] != "EdDSA" || hdr["kid"] != iss.KeyID() || iss.KeyID() == "" {
		t.Errorf("header %v; want alg EdDSA, kid %s", hdr, iss.KeyID())
	}
	c := decodeSegment(t, parts[1])
	if c["sub"] != "spiffe://openshell/sandbox/3f2a-sb_1.x" || c["sandbox_id"] != "3f2a-sb_1.x" ||
		c["iss"] != "openshell-gateway:gw1" || c["aud"] == nil {
		t.Errorf("claims %v", c)
	}
	aud, _ := json.Marshal(c["aud"])
	if !strings.Contains(string(aud), "openshell-gateway:gw1") {
		t.Errorf("aud %s", aud)
	}
	iat, _ := c["iat"].(float64)
	exp, _ := c["exp"].(float64)
	if int64(iat) < before || int64(exp)-int64(iat) != 3600 {
		t.Errorf("iat %v exp %v; want iat >= %d and exp = iat + 3600", iat, exp, before)
	}

	tok, err = iss.Mint("sb", 0)
	if err != nil {
		t.Fatal(err)
	}
	c = decodeSegment(t, strings.Split(tok, ".")[1])
	if ttl := c["exp"].(float64) - c["iat"].(float64); ttl != DefaultTTL.Seconds() {
		t.Errorf("ttl 0 gave a lifetime of %vs, want DefaultTTL", ttl)
	}
}

func TestMintRejectsBadInput(t *testing.T) {
	iss := newIssuer(t, "gw")
	for _, id := range []string{"", "a/b", "../x", "a b", strings.Repeat("a", 129), "-lead", "é"} {
		if _, err := iss.Mint(id, time.Hour); err == nil {
			t.Errorf("Mint(%q) succeeded", id)
		}
	}
	if _, err := iss.Mint("ok", -time.Second); err == nil {
		t.Error("Mint with negative ttl succeeded")
	}
}

func TestKeyPersistence(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "jwt.key")
	a, err := NewIssuer(path, "gw")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("key dir mode %v, %v; want 0700", st.Mode().Perm(), err)
	}
	tok, err := a.Mint("sb1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewIssuer(path, "gw") // a restarted gateway
	if err != nil {
		t.Fatal(err)
	}
	if b.KeyID() != a.KeyID() {
		t.Fatalf("reloaded key has kid %s, want %s", b.KeyID(), a.KeyID())
	}
	if id, err := b.Verify(tok); err != nil || id != "sb1" {
		t.Fatalf("token from before the restart: %q, %v", id, err)
	}
	// A loose mode is tightened on load.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewIssuer(path, "gw"); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode after load %v, want 0600", st.Mode().Perm())
	}
}

func TestNewIssuerConcurrentCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jwt.key")
	const n = 8
	kids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			iss, err := NewIssuer(path, "gw")
			if err == nil {
				kids[i] = iss.KeyID()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, k := range kids {
		if k != kids[0] {
			t.Fatalf("concurrent NewIssuer calls ended with different keys: %v", kids)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestNewIssuerErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewIssuer(filepath.Join(dir, "k"), ""); err == nil {
		t.Error("empty gateway id accepted")
	}
	if _, err := NewIssuer(filepath.Join(dir, "k"), "gw id"); err == nil {
		t.Error("gateway id with a space accepted")
	}
	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewIssuer(bad, "gw"); err == nil {
		t.Error("garbage key file accepted")
	}
	if b, _ := os.ReadFile(bad); string(b) != "not a key" {
		t.Error("garbage key file was overwritten")
	}
}

// sign builds a token by hand with any method and key, for the rejection cases.
func sign(t *testing.T, m jwt.SigningMethod, key any, hdr map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	for k, v := range hdr {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerifyRejects(t *testing.T) {
	iss := newIssuer(t, "gw1")
	now := time.Now()
	good := func() jwt.MapClaims {
		return jwt.MapClaims{
			"sub": SubjectPrefix + "sb1", "sandbox_id": "sb1",
			"iss": "openshell-gateway:gw1", "aud": "openshell-gateway:gw1",
			"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		}
	}
	with := func(k string, v any) jwt.MapClaims {
		c := good()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	kid := map[string]any{"kid": iss.KeyID()}
	// Sanity: the hand-built good token verifies, so each case below fails for its
	// own reason.
	if id, err := iss.Verify(sign(t, jwt.SigningMethodEdDSA, iss.key, kid, good())); err != nil || id != "sb1" {
		t.Fatalf("hand-built token: %q, %v", id, err)
	}

	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	otherGW := newIssuer(t, "gw2")
	// Same key, other gateway id: signature fine, iss/aud wrong.
	sameKeyOtherGW := &Issuer{key: iss.key, pub: iss.pub, kid: iss.kid, audience: "openshell-gateway:gw2", now: time.Now}
	tokOtherGW, err := sameKeyOtherGW.Mint("sb1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tokOtherKey, err := otherGW.Mint("sb1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	unsigned := func(c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodNone, c).SignedString(jwt.UnsafeAllowNoneSignatureType)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	valid := sign(t, jwt.SigningMethodEdDSA, iss.key, kid, good())
	p := strings.Split(valid, ".")
	forged := good()
	forged["sandbox_id"], forged["sub"] = "sb2", SubjectPrefix+"sb2"
	forgedPayload, _ := json.Marshal(forged)

	for name, tok := range map[string]string{
		"alg none":                    unsigned(good()),
		"alg none with kid":           p[0] + "." + strings.Split(unsigned(good()), ".")[1] + ".",
		"HS256 keyed with public key": sign(t, jwt.SigningMethodHS256, []byte(iss.pub), kid, good()),
		"HS256 keyed with JWKS":       sign(t, jwt.SigningMethodHS256, iss.JWKS(), kid, good()),
		"other key, our kid":          sign(t, jwt.SigningMethodEdDSA, otherKey, kid, good()),
		"other gateway's issuer":      tokOtherKey,
		"our key, wrong kid":          sign(t, jwt.SigningMethodEdDSA, iss.key, map[string]any{"kid": "nope"}, good()),
		"our key, no kid":             sign(t, jwt.SigningMethodEdDSA, iss.key, nil, good()),
		"our key, other gateway aud":  tokOtherGW,
		"wrong aud":                   sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("aud", "openshell-gateway:gw2")),
		"wrong iss":                   sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("iss", "someone-else")),
		"no aud":                      sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("aud", nil)),
		"expired":                     sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("exp", now.Add(-2*time.Minute).Unix())),
		"no exp":                      sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("exp", nil)),
		"issued in the future":        sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("iat", now.Add(time.Hour).Unix())),
		"not before in the future":    sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("nbf", now.Add(time.Hour).Unix())),
		"sub names another sandbox":   sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("sub", SubjectPrefix+"sb2")),
		"sub not spiffe":              sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("sub", "sb1")),
		"no sandbox_id":               sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("sandbox_id", nil)),
		"bad sandbox_id":              sign(t, jwt.SigningMethodEdDSA, iss.key, kid, with("sandbox_id", "../etc")),
		"tampered payload":            p[0] + "." + base64.RawURLEncoding.EncodeToString(forgedPayload) + "." + p[2],
		"truncated signature":         valid[:len(valid)-4],
		"signature of another token":  p[0] + "." + p[1] + "." + strings.Split(tokOtherKey, ".")[2],
		"oversized":                   valid + strings.Repeat("A", MaxTokenLen),
		"empty":                       "",
		"garbage":                     "a.b.c",
		"two parts":                   p[0] + "." + p[1],
	} {
		t.Run(name, func(t *testing.T) {
			id, err := iss.Verify(tok)
			if err == nil {
				t.Fatalf("Verify accepted it (sandbox %q)", id)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if id != "" {
				t.Fatalf("returned sandbox id %q with an error", id)
			}
		})
	}
}

func TestVerifyExpiryWithClock(t *testing.T) {
	iss := newIssuer(t, "gw")
	tok, err := iss.Mint("sb", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	iss.now = func() time.Time { return start.Add(59 * time.Minute) }
	if _, err := iss.Verify(tok); err != nil {
		t.Fatalf("token rejected before expiry: %v", err)
	}
	iss.now = func() time.Time { return start.Add(time.Hour + 2*leeway) }
	if _, err := iss.Verify(tok); !errors.Is(err, ErrInvalid) || !errors.Is(err, jwt.ErrTokenExpired) {
		t.Fatalf("expired token: %v, want ErrInvalid wrapping ErrTokenExpired", err)
	}
}

func TestJWKS(t *testing.T) {
	iss := newIssuer(t, "gw")
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(iss.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 1 {
		t.Fatalf("JWKS has %d keys", len(set.Keys))
	}
	k := set.Keys[0]
	x, err := base64.RawURLEncoding.DecodeString(k["x"])
	if err != nil || k["kty"] != "OKP" || k["crv"] != "Ed25519" || k["alg"] != "EdDSA" || k["kid"] != iss.KeyID() {
		t.Fatalf("JWK %v", k)
	}
	if !ed25519.PublicKey(x).Equal(iss.pub) {
		t.Fatal("JWKS public key differs from the signing key")
	}
	// The published key verifies a minted token on its own.
	tok, err := iss.Mint("sb", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return ed25519.PublicKey(x), nil }, jwt.WithValidMethods([]string{"EdDSA"})); err != nil {
		t.Fatalf("token does not verify with the JWKS key: %v", err)
	}
	// RFC 7638 thumbprint, example key from RFC 8037 appendix A.3.
	pub, _ := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	if got := thumbprint(pub); got != "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k" {
		t.Fatalf("thumbprint = %s", got)
	}
}

// FuzzVerify feeds arbitrary strings to Verify: it must never panic, and nothing but
// a token this issuer minted may pass.
func FuzzVerify(f *testing.F) {
	path := filepath.Join(f.TempDir(), "jwt.key")
	iss, err := NewIssuer(path, "gw")
	if err != nil {
		f.Fatal(err)
	}
	minted := map[string]bool{}
	for _, id := range []string{"sb1", "a.b-c_d"} {
		tok, err := iss.Mint(id, time.Hour)
		if err != nil {
			f.Fatal(err)
		}
		minted[tok] = true
		f.Add(tok)
		p := strings.Split(tok, ".")
		f.Add(p[0] + "." + p[1] + ".")
		f.Add(tok + "x")
	}
	for _, s := range []string{"", ".", "..", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "eyJhbGciOiJFZERTQSJ9.e30.AAAA"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := iss.Verify(tok)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || id != "" {
				t.Fatalf("Verify(%q) = %q, %v", tok, id, err)
			}
			return
		}
		if !minted[tok] {
			t.Fatalf("Verify accepted a token it never minted: %q (sandbox %q)", tok, id)
		}
	})
}
