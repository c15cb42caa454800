// Package grpcopts holds the gRPC transport settings shared by the CLI, the gateway
// and the supervisor. File transfers, exec output and port forwards stream as relay
// frames of up to RelayChunk bytes through all three, so they tune the transport
// the same way: large flow-control windows, 256 KiB socket buffers, a buffer pool
// with a tier sized for relay frames, and TLS with batched record I/O.
package grpcopts

import (
	"crypto/tls"
	"os"
	"runtime/debug"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"

	"github.com/openshell/openshell/internal/tlsbatch"
)

// RelayChunk is the largest data payload of one relay frame (ForwardTcp,
// RelayStream): big enough to keep per-frame costs low, well under the 1 MiB
// message limit.
const RelayChunk = 256 << 10

const (
	streamWindow = 4 << 20
	connWindow   = 8 << 20
	socketBuffer = 256 << 10
)

// framePool serves gRPC's receive and marshal buffers. gRPC's default pool rounds
// a relay frame (RelayChunk plus a few bytes of framing) up to its 1 MiB tier and
// clears the whole megabyte on every reuse; here a class sits just above
// RelayChunk and nothing is cleared. The other classes are the default's.
var framePool = newSizedPool(256, 4<<10, 16<<10, 32<<10, RelayChunk+1<<10, 1<<20)

// TLS returns transport credentials for cfg with batched record I/O.
func TLS(cfg *tls.Config) credentials.TransportCredentials {
	return tlsbatch.Credentials(credentials.NewTLS(cfg))
}

// Dial returns the transport options of a client connection secured by creds.
func Dial(creds credentials.TransportCredentials) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithInitialWindowSize(streamWindow), grpc.WithInitialConnWindowSize(connWindow),
		grpc.WithReadBufferSize(socketBuffer), grpc.WithWriteBufferSize(socketBuffer),
		experimental.WithBufferPool(framePool),
	}
}

// Server returns the transport options of a server; creds nil means plaintext.
func Server(creds credentials.TransportCredentials) []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.InitialWindowSize(streamWindow), grpc.InitialConnWindowSize(connWindow),
		grpc.ReadBufferSize(socketBuffer), grpc.WriteBufferSize(socketBuffer),
		experimental.BufferPool(framePool),
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	return opts
}

// TuneGC sets the garbage collector's target to 400% unless GOGC is set. Relays
// allocate a frame per message over a live heap of a few MiB, so the binaries that
// relay (CLI, gateway, supervisor) spent a tenth of a transfer's CPU collecting at
// the default 100%; the larger target costs a few MiB.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
}
