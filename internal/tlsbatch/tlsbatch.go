// Package tlsbatch wraps gRPC TLS transport credentials so that bulk data costs
// fewer system calls.
//
// crypto/tls writes every record (at most 16 KiB) with its own write(2) and reads
// roughly one record per read(2). gRPC hands the TLS connection 256 KiB at a time
// when relays carry file transfers, so one gRPC flush became ~16 writes, each a
// separate TCP push with TCP_NODELAY, and the peer woke up for each. Here the
// records of one Write are gathered and written with one system call, and reads
// are served from a 256 KiB buffer filled by one system call. Bytes on the wire
// are identical; only their grouping into system calls changes.
package tlsbatch

import (
	"bufio"
	"context"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
)

// bufSize bounds both buffers: the gRPC transports here flush 256 KiB at a time.
const bufSize = 256 << 10

// Credentials returns c with batched record I/O on every connection it secures.
func Credentials(c credentials.TransportCredentials) credentials.TransportCredentials {
	return &creds{TransportCredentials: c}
}

type creds struct {
	credentials.TransportCredentials
}

func (c *creds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	b := newBatchConn(raw)
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, b)
	if err != nil {
		return nil, nil, err
	}
	return &tlsConn{Conn: conn, raw: b}, info, nil
}

func (c *creds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	b := newBatchConn(raw)
	conn, info, err := c.TransportCredentials.ServerHandshake(b)
	if err != nil {
		return nil, nil, err
	}
	return &tlsConn{Conn: conn, raw: b}, info, nil
}

func (c *creds) Clone() credentials.TransportCredentials {
	return &creds{TransportCredentials: c.TransportCredentials.Clone()}
}

// tlsConn is the secured connection: each Write's records leave in one flush.
type tlsConn struct {
	net.Conn // the TLS connection
	raw      *batchConn
}

func (c *tlsConn) Write(p []byte) (int, error) {
	c.raw.begin()
	n, err := c.Conn.Write(p)
	if ferr := c.raw.end(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}

// batchConn sits under the TLS layer. Outside a batch, writes pass straight
// through (the handshake, alerts, key updates sent while reading); inside one they
// are gathered until the batch ends or the buffer fills. The mutex keeps bytes in
// the order TLS produced them when a reader's key-update reply meets a writer.
type batchConn struct {
	net.Conn
	r *bufio.Reader

	mu       sync.Mutex
	batching int
	buf      []byte
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{Conn: c, r: bufio.NewReaderSize(c, bufSize)}
}

// Read is called by one TLS reader at a time (TLS serializes its reads).
func (b *batchConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.batching == 0 {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		return b.Conn.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= bufSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching++
	b.mu.Unlock()
}

// end closes a batch and writes what it gathered.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching--
	return b.flushLocked()
}

func (b *batchConn) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	// A net.Conn's Write writes everything or fails.
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}
