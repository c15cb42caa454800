package supervisor

// Work done before the sandbox is known. A warm pool's VM boots to the point where its
// supervisor waits for its configuration, and a create is Ready as soon as the
// supervisor has started up from there; whatever does not depend on the sandbox's
// identity is done while it waits instead (measured under TCG on a pooled VM, before
// this: 1.1 s in the first getrandom, the kernel's random pool being initialised on
// demand in an idle guest; ~0.35 s in the first marshal of each protobuf type; the
// SSH host key). None of it holds anything of a sandbox, and a pooled VM serves one
// sandbox only, so nothing done here is ever shared between two.

import (
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/openshell/openshell/supervisor/credentials"
	"github.com/openshell/openshell/supervisor/policy"
)

// Warm is the result of Prewarm, handed to Run in Options.Warm.
type Warm struct {
	stopped atomic.Bool
	done    chan struct{}

	mu      sync.Mutex
	hostKey ssh.Signer // taken once
	took    time.Duration
}

// Prewarm starts the identity-free part of the supervisor's start-up in the
// background: the kernel's random pool (the first getrandom blocks until it is
// initialised), this boot's SSH host key, the protobuf types' lazy set-up, and one run
// of the policy compiler and the CA code (which also pays, under emulation, for
// translating that code once). Run stops what is left of it when the configuration
// arrives: the work it needs is then done on its own path.
func Prewarm() *Warm {
	w := &Warm{done: make(chan struct{})}
	go w.run()
	return w
}

func (w *Warm) run() {
	defer close(w.done)
	t0 := time.Now()
	defer func() {
		w.mu.Lock()
		w.took = time.Since(t0)
		w.mu.Unlock()
	}()
	var b [16]byte
	_, _ = rand.Read(b[:])
	if _, priv, err := ed25519.GenerateKey(rand.Reader); err == nil {
		if signer, err := ssh.NewSignerFromKey(priv); err == nil {
			w.mu.Lock()
			w.hostKey = signer
			w.mu.Unlock()
		}
	}
	// Each message type sets up its encoder on its first use: do it for every type
	// this binary knows (the gateway API, the policy wire types), not only the few a
	// guess would name.
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if w.stopped.Load() {
			return false
		}
		m := mt.New().Interface()
		if b, err := proto.Marshal(m); err == nil {
			_ = proto.Unmarshal(b, m)
		}
		return true
	})
	if w.stopped.Load() {
		return
	}
	_, _ = policy.Compile(policy.Default())
	if w.stopped.Load() {
		return
	}
	_, _ = credentials.NewCA("prewarm")
}

// stop ends what is left of the warm-up (nil-safe).
func (w *Warm) stop() {
	if w != nil {
		w.stopped.Store(true)
	}
}

// takeHostKey returns the host key made ahead, once; nil when there is none (yet).
func (w *Warm) takeHostKey() ssh.Signer {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	k := w.hostKey
	w.hostKey = nil
	return k
}

// Done is closed when the warm-up has ended (finished or stopped).
func (w *Warm) Done() <-chan struct{} { return w.done }
