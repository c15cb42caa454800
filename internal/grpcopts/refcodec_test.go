package grpcopts

import (
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
)

// grpcProtoCodec is gRPC's own protobuf codec, captured before this package's init
// replaced it in the registry (the import orders the inits), for the benchmark.
var grpcProtoCodec = func() encoding.CodecV2 {
	return encoding.GetCodecV2(grpcproto.Name)
}()
