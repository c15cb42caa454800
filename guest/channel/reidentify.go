package channel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
)

// maxIdentityBytes bounds a new identity document (a bootstrap config and a little more).
const maxIdentityBytes = 8 << 20

// FetchNewIdentity asks the host whether this guest is now another sandbox: a VM
// restored as a copy of a snapshot still holds the snapshotted sandbox's identity,
// and its runner serves the copy's bootstrap document on the bootstrap port to the
// connection that opens with the old instance secret (which only the supervisor
// holds). It returns the document (acknowledged, the port confirmed closed), or nil
// when the host offers none (the usual case: the port closed after this boot's
// first document).
func FetchNewIdentity(ctx context.Context, secret wire.Secret) ([]byte, error) {
	c, err := DialHostAs(ctx, PortBootstrap, secret)
	if err != nil {
		return nil, nil // nobody serves the port: no new identity
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	var doc json.RawMessage
	if err := json.NewDecoder(io.LimitReader(c, maxIdentityBytes)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil // the host closed the stream: nothing for us
		}
		return nil, fmt.Errorf("guest channel: read a new identity: %w", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	if err := AckBootstrap(c, 10*time.Second); err != nil {
		return nil, err
	}
	return doc, nil
}

// HostReturns delivers a value each time the host end of the channel comes back after
// it was gone: the guest was saved and is now restored (a resume, or a copy made from
// a snapshot), or its runner was restarted. Only then can the host have a new
// identity for this guest, so the supervisor asks for one at that moment rather than
// at each reconnect of its gateway session (which waits out that session's backoff).
// On the virtio-serial transport a watcher notices the host's greeting within tens of
// milliseconds; on vsock a restored copy has a new context id, seen at its next dial,
// and any restored guest's open connections fail with the device's transport reset
// (resetNoticing).
// The channel ends with ctx.
func HostReturns(ctx context.Context) <-chan struct{} {
	ch := hostReturns.subscribe(ctx)
	watchReturns()
	return ch
}

// returnFeed fans "the host end came back" out to its subscribers; a subscriber that
// has not taken the last value misses none that matter (one pending value is enough).
type returnFeed struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

var hostReturns = &returnFeed{subs: map[chan struct{}]struct{}{}}

func (f *returnFeed) subscribe(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	})
	return ch
}

func (f *returnFeed) notify() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
