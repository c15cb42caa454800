package tlsbatch

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gw"}, DNSNames: []string{"gw"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		&tls.Config{RootCAs: pool, ServerName: "gw"}
}

// pair returns both ends of a TLS connection over real loopback TCP, secured by
// wrap(credentials.NewTLS(...)), and the socket-level write counter of the client.
func pair(t *testing.T, wrap func(credentials.TransportCredentials) credentials.TransportCredentials) (srv, cli net.Conn, cliWrites *atomic.Int64) {
	t.Helper()
	scfg, ccfg := testTLS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		c, _, err := wrap(credentials.NewTLS(scfg)).ServerHandshake(raw)
		ch <- res{c, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: raw}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cli, _, err = wrap(credentials.NewTLS(ccfg)).ClientHandshake(ctx, "gw", cc)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { cli.Close(); r.c.Close() })
	return r.c, cli, &cc.writes
}

// send writes total bytes in writes of chunk and reads them back on the other end.
func send(t *testing.T, from, to net.Conn, total, chunk int) {
	t.Helper()
	data := make([]byte, total)
	rand.Read(data)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(to, int64(total)))
		got <- b
	}()
	for off := 0; off < total; off += chunk {
		if _, err := from.Write(data[off:min(off+chunk, total)]); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, data) {
			t.Fatalf("received %d bytes, not the %d sent (or different)", len(b), total)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("transfer stalled")
	}
}

func TestWritesAreGathered(t *testing.T) {
	const total, chunk = 4 << 20, 256 << 10
	plainSrv, plainCli, plainWrites := pair(t, func(c credentials.TransportCredentials) credentials.TransportCredentials { return c })
	before := plainWrites.Load()
	send(t, plainCli, plainSrv, total, chunk)
	plain := plainWrites.Load() - before

	srv, cli, writes := pair(t, Credentials)
	before = writes.Load()
	send(t, cli, srv, total, chunk)
	batched := writes.Load() - before

	// Plain TLS: one write per 16 KiB record (256 for 4 MiB). Batched: one per
	// Write call, plus at most one extra per buffer fill.
	if plain < total/(16<<10) {
		t.Fatalf("plain TLS made %d socket writes for %d bytes; expected one per record", plain, total)
	}
	if max := int64(2 * total / chunk); batched > max {
		t.Fatalf("batched TLS made %d socket writes for %d bytes in %d-byte writes; want ≤ %d (plain: %d)", batched, total, chunk, max, plain)
	}
	t.Logf("socket writes for 4 MiB: plain %d, batched %d", plain, batched)
}

// TestBothWaysAtOnce sends large amounts in both directions at the same time from
// several goroutines: nothing is lost, reordered or stuck in a buffer.
func TestBothWaysAtOnce(t *testing.T) {
	srv, cli, _ := pair(t, Credentials)
	var wg sync.WaitGroup
	for _, dir := range [][2]net.Conn{{cli, srv}, {srv, cli}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(t, dir[0], dir[1], 8<<20, 100_000) // odd size: records straddle writes
		}()
	}
	wg.Wait()
	// A small write after bulk traffic is delivered at once, not held back.
	go cli.Write([]byte("ping"))
	buf := make([]byte, 4)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("small write after bulk: %q, %v", buf, err)
	}
}

func TestHandshakeFailureIsReported(t *testing.T) {
	scfg, _ := testTLS(t)
	_, other := testTLS(t) // trusts a different CA
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		defer raw.Close()
		Credentials(credentials.NewTLS(scfg)).ServerHandshake(raw)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, _, err := Credentials(credentials.NewTLS(other)).ClientHandshake(ctx, "gw", raw); err == nil {
		t.Fatal("handshake with an untrusted server certificate succeeded")
	}
}
