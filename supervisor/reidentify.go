package supervisor

// Re-identification of a VM guest restored as a copy of another sandbox (a create
// from a snapshot). The restored supervisor still holds the snapshotted sandbox's
// identity (id, token, instance secret, environment). Its channel to the host dropped
// across the save and restore, and when the host end is back (Reidentify.Returns) it
// asks the host whether this guest is now someone else: the copy's runner answers, on
// the bootstrap port, with the copy's bootstrap document, plus the host's time and
// fresh entropy. The supervisor then steps the clock, feeds the entropy to the
// kernel and has it reseed (the copies share the snapshotted random state), ends its
// run as the old sandbox and runs again as the new one: the old identity's session,
// token and credentials are dropped; the old main process is killed at once (nobody
// waits for it: the source sandbox runs on elsewhere), Apply ends whatever else of
// the old run is left (a VM guest's init kills every other process), and the copy's
// own command starts. The files (the disk) are the
// copy's own. What cannot change without a reboot stays: the kernel's boot_id, the
// state of processes' own user-space random generators.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/openshell/openshell/supervisor/bootstrap"
)

// Identity is a new identity handed to a restored guest, or (Config nil) only the
// host's state: what a resumed guest's runner answers.
type Identity struct {
	Config   *bootstrap.Config
	HostTime time.Time
	Entropy  []byte
}

// ParseIdentity decodes the document a copy's runner serves (bootstrap.IdentityDoc),
// or the one a resumed guest's runner serves: no configuration (no sandbox id), only
// the host's time.
func ParseIdentity(doc []byte) (*Identity, error) {
	var d bootstrap.IdentityDoc
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("new identity: %w", err)
	}
	id := &Identity{Entropy: d.Reidentify.Entropy}
	if ns := d.Reidentify.HostTimeUnixNano; ns > 0 {
		id.HostTime = time.Unix(0, ns)
	}
	if d.SandboxID == "" {
		if id.HostTime.IsZero() {
			return nil, errors.New("new identity: the document has neither a sandbox_id nor the host's time")
		}
		return id, nil
	}
	if err := d.Config.Validate(); err != nil {
		return nil, fmt.Errorf("new identity: %w", err)
	}
	id.Config = &d.Config
	return id, nil
}

// Reidentify is what RunVM needs from the guest's channel.
type Reidentify struct {
	// Fetch asks the host for a new identity, opening with the current instance
	// secret; nil, nil when it offers none.
	Fetch func(ctx context.Context) ([]byte, error)
	// Apply makes id current for the next run (the instance secret the dialers
	// present, the hostname) and ends what is left of the old run's processes (the
	// main process's children, daemons it started); called before the supervisor
	// runs again.
	Apply func(id *Identity)
	// ProbeTimeout bounds one Fetch (default 5 s).
	ProbeTimeout time.Duration
	// Returns delivers a value each time the guest's host end came back after it was
	// gone (the guest was restored): a probe follows at once, without waiting for the
	// gateway session's reconnect backoff. nil: none.
	Returns <-chan struct{}
}

// watcher probes for a new identity when the guest's host end comes back (only a
// restored guest sees that), never at a mere reconnect of the gateway session (a
// gateway restart): a guest that was not restored has nothing to ask.
type watcher struct {
	re      *Reidentify
	current string
	log     *slog.Logger

	mu      sync.Mutex
	probing bool
	found   *Identity
	foundAt time.Time
	foundCh chan struct{}
}

// retryFor bounds how long a failed probe after a host return is asked again.
const retryFor = time.Minute

// probe asks the host for a new identity in the background, unless a probe is under
// way or an identity was found. A probe that fails is asked again (50 ms doubling to
// 2 s) for up to retryFor: the host end is back, so the question is worth an answer.
func (w *watcher) probe(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.probing || w.found != nil {
		return
	}
	w.probing = true
	go w.ask(ctx, time.Now(), 50*time.Millisecond)
}

func (w *watcher) ask(ctx context.Context, since time.Time, retry time.Duration) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cmp.Or(w.re.ProbeTimeout, 5*time.Second))
	doc, err := w.re.Fetch(pctx)
	cancel()
	var id *Identity
	if err == nil && doc != nil {
		id, err = ParseIdentity(doc)
		clear(doc)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err != nil && ctx.Err() == nil && time.Since(since) < retryFor:
		w.log.Warn("asking the host for a new identity failed; asking again", "err", err, "retry_in", retry)
		time.AfterFunc(retry, func() { w.ask(ctx, since, min(2*retry, 2*time.Second)) })
		return // still probing
	case err != nil:
		w.log.Warn("asking the host for a new identity failed", "err", err)
	case id != nil && id.Config == nil:
		// Resumed, still this sandbox: the clock stood still while it was suspended.
		applyHostState(id, w.log)
	case id != nil && id.Config.SandboxID != w.current:
		w.found, w.foundAt = id, time.Now()
		close(w.foundCh)
	case id != nil:
		w.log.Warn("the host offered this sandbox's own identity again; ignored")
	}
	w.probing = false
}

// watch probes each time the host end comes back, until ctx ends; once a new identity
// is found it ends the run (end).
func (w *watcher) watch(ctx context.Context, end context.CancelFunc) {
	for {
		select {
		case <-w.re.Returns:
			w.probe(ctx)
		case <-w.foundCh:
			w.log.Info("this VM was restored as a copy of sandbox "+w.current+": ending this run to become the new sandbox", "new_sandbox_id", w.found.Config.SandboxID)
			end()
			return
		case <-ctx.Done():
			return
		}
	}
}

// taken reports whether a new identity was found.
func (w *watcher) taken() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.found != nil
}

// errReidentified refuses the old identity's dials once a new identity is taken.
var errReidentified = errors.New("this guest is now another sandbox: the old identity's session is over")

// RunVM runs the supervisor of a VM guest (Run) and, when the host hands the guest a
// new identity (it was restored as a copy of a snapshot), ends that run and runs
// again as the new sandbox, until ctx ends or a run fails.
func RunVM(ctx context.Context, cfg *bootstrap.Config, o Options, re *Reidentify) error {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	dial := o.Dial
	for {
		w := &watcher{re: re, current: cfg.SandboxID, log: log, foundCh: make(chan struct{})}
		runCtx, cancel := context.WithCancelCause(ctx)
		o.Dial = func(dctx context.Context, addr string) (net.Conn, error) {
			if w.taken() {
				// The run is ending as the old sandbox: its last calls (the final log
				// flush) fail at once instead of waiting on a session the host refuses.
				return nil, errReidentified
			}
			return dial(dctx, addr)
		}
		go w.watch(runCtx, func() { cancel(errReidentified) })
		err := Run(runCtx, cfg, o)
		cancel(nil)
		o.Early = nil // this boot's first lines: shipped by its first identity's run only
		w.mu.Lock()
		id := w.found
		w.mu.Unlock()
		if id == nil || ctx.Err() != nil {
			return err
		}
		log.Info("the old identity's run ended", "took", time.Since(w.foundAt).Round(time.Millisecond))
		if err != nil {
			log.Warn("the old identity's run ended with an error; going on as the new sandbox", "err", err)
		}
		applyHostState(id, log)
		re.Apply(id)
		cfg = id.Config
	}
}

// stepClock sets the system clock (tests replace it: they must not step the host's).
var stepClock = setClock

// SetClock sets the system clock to t (a VM guest's supervisor, to the host's) and
// returns how far behind t the clock was (negative: ahead).
func SetClock(t time.Time) (behind time.Duration, err error) {
	behind = time.Until(t)
	return behind, stepClock(t)
}

// applyHostState steps the clock to the host's and reseeds the kernel's random
// generator with the host's entropy; failures are logged (the new identity is taken
// anyway).
func applyHostState(id *Identity, log *slog.Logger) {
	if !id.HostTime.IsZero() {
		if behind, err := SetClock(id.HostTime); err != nil {
			log.Warn("cannot step the clock to the host's", "err", err)
		} else {
			log.Info("clock stepped to the host's", "was_behind", behind.Round(time.Millisecond))
		}
	}
	if len(id.Entropy) > 0 {
		if err := reseedRandom(id.Entropy); err != nil {
			log.Warn("cannot reseed the kernel's random generator", "err", err)
		}
		clear(id.Entropy)
	}
}
