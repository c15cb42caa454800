package hub

import (
	"io"
	"sync"
	"testing"
)

// endedFrames is the client side of a stream whose far end has sent its frames and
// ended the stream: Send fails with io.EOF (as a gRPC client stream's does once the
// server's status is in), and Recv still hands the sent frames over, then io.EOF, but
// only once released, so the test decides which side learns of the end first.
type endedFrames struct {
	frames  [][]byte
	release chan struct{}
	sent    chan struct{} // closed at the first Send
	once    sync.Once
}

var _ Frames = (*endedFrames)(nil)

func (f *endedFrames) Send([]byte) error {
	f.once.Do(func() { close(f.sent) })
	return io.EOF
}

func (f *endedFrames) Recv() ([]byte, error) {
	<-f.release
	if len(f.frames) == 0 {
		return nil, io.EOF
	}
	d := f.frames[0]
	f.frames = f.frames[1:]
	return d, nil
}

func (f *endedFrames) CloseSend() error { return nil }

// TestStreamConnKeepsFramesAfterSendFails: the far end (the replica holding the
// session) ran a short exec to its end and ended the stream before this side's first
// frame (the exec's end of stdin) went out. That Send fails; the far end's output and
// exit frame, still on their way in, must reach the reader all the same. Writes fail
// from then on rather than queue bytes nobody sends.
func TestStreamConnKeepsFramesAfterSendFails(t *testing.T) {
	f := &endedFrames{frames: [][]byte{[]byte("hello "), []byte("exit")}, release: make(chan struct{}), sent: make(chan struct{})}
	conn := StreamConn(f, nil, func() {})
	defer conn.Close()
	if _, err := conn.Write([]byte("stdin-eof")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, f.sent, "the written bytes were not sent")
	// Wait until the failed Send has been taken in (writes fail), so the frames
	// arrive after it: the order of the race seen between two replicas.
	waitWritesRefused(t, conn, "the stream refused a frame")
	close(f.release)
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "hello exit" {
		t.Fatalf("read %q, %v after the far end ended the stream; want its frames %q, then EOF", got, err, "hello exit")
	}
}
