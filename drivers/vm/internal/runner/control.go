package runner

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/openshell/openshell/guest/channel/wire"
)

// Runner states reported on the control socket.
const (
	StateBooting  = "booting"  // VMM started, guest has not dialled in yet
	StatePooled   = "pooled"   // a warm pool's VM: booted, waiting for a sandbox identity (claim.go)
	StateRunning  = "running"  // guest fetched (and acknowledged) its bootstrap config
	StateStopping = "stopping" // graceful shutdown in progress
	StateExited   = "exited"   // VM gone; tombstone written; runner about to exit
)

// Status is the runner's answer on GET /status and each line of GET /watch.
type Status struct {
	State     string    `json:"state"`
	RunnerPID int       `json:"runner_pid"`
	VMMPID    int       `json:"vmm_pid,omitempty"`  // runners of earlier versions said qemu_pid (see UnmarshalJSON)
	StartedAt time.Time `json:"started_at"`         // VMM started
	BootedAt  time.Time `json:"booted_at,omitzero"` // guest fetched its bootstrap config
	Reason    string    `json:"reason,omitempty"`   // set in StateExited
	Message   string    `json:"message,omitempty"`  // human detail
	// Bootstrap counts bootstrap documents served and acknowledged (at most one per
	// boot: the port closes after it); BootstrapUnacked counts attempts the guest
	// did not complete (served again to its next one).
	Bootstrap        int `json:"bootstrap_count"`
	BootstrapUnacked int `json:"bootstrap_unacked,omitempty"`
	Gateway          int `json:"gateway_conns"` // gateway connections bridged
	// GatewayRefused and EgressRefused count connections closed because the port
	// already held its limit of open streams (Spec.Limits).
	GatewayRefused int `json:"gateway_refused,omitempty"`
	EgressRefused  int `json:"egress_refused,omitempty"`
	// BadPreamble counts connections to the gateway or egress port refused for not
	// starting with this boot's instance preamble (not the supervisor).
	BadPreamble int `json:"bad_preamble,omitempty"`
	// Timeline is this boot's steps after the runner's start (StartedAt), in order:
	// vmm (the VMM answers), then from the guest's acknowledgement firmware, kernel,
	// init, supervisor (guest clock mapped to the host's) and bootstrap.
	Timeline []wire.HostStep `json:"timeline,omitempty"`
	// Pool is the warm pool a pooled VM was booted for; GuestWaiting says its guest's
	// supervisor has asked for its identity (the bootstrap fetch is held open), so a
	// claim is served at once; GuestSettled that the guest's warm-up is over too
	// (settle.go); ClaimedAt is when a sandbox claimed it.
	Pool         string    `json:"pool,omitempty"`
	GuestWaiting bool      `json:"guest_waiting,omitempty"`
	GuestSettled bool      `json:"guest_settled,omitempty"`
	ClaimedAt    time.Time `json:"claimed_at,omitzero"`
}

// statusBox holds the current status and wakes watchers on change.
type statusBox struct {
	mu      sync.Mutex
	st      Status
	changed chan struct{}
}

func newStatusBox(st Status) *statusBox {
	return &statusBox{st: st, changed: make(chan struct{})}
}

func (b *statusBox) get() (Status, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.st, b.changed
}

func (b *statusBox) update(fn func(*Status)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fn(&b.st)
	close(b.changed)
	b.changed = make(chan struct{})
}

// control is the HTTP API served on the runner's Unix socket.
type control struct {
	box  *statusBox
	stop func() // asks for a graceful stop (idempotent)
	kill func() // asks for an immediate kill (idempotent)
	// setGateway changes where guest gateway sessions are bridged (a restarted
	// gateway may listen on another port).
	setGateway func(addr string) error
	// claim hands a pooled VM its sandbox identity (nil: not a pooled VM).
	claim func(*Claim) error
	// suspend saves the VM and ends it (suspend.go); nil: this runner cannot.
	suspend func(context.Context) error
	// snapshot saves a copy of the running VM into a directory (snapshot.go).
	snapshot func(ctx context.Context, dir string) (*SnapshotRecord, error)
}

func (c *control) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, _ := c.box.get()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("GET /watch", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		fl, _ := w.(http.Flusher)
		enc := json.NewEncoder(w)
		for {
			st, ch := c.box.get()
			if err := enc.Encode(st); err != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
			if st.State == StateExited {
				return
			}
			select {
			case <-ch:
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("POST /stop", func(w http.ResponseWriter, r *http.Request) {
		c.stop()
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("POST /suspend", c.serveSuspend)
	mux.HandleFunc("POST /snapshot", c.serveSnapshot)
	mux.HandleFunc("POST /kill", func(w http.ResponseWriter, r *http.Request) {
		c.kill()
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("POST /gateway", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Addr string `json:"addr"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if c.setGateway == nil {
			http.Error(w, "not supported", http.StatusNotImplemented)
			return
		}
		if err := c.setGateway(req.Addr); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("POST /claim", func(w http.ResponseWriter, r *http.Request) {
		var cl Claim
		if err := json.NewDecoder(io.LimitReader(r.Body, maxClaimBytes)).Decode(&cl); err != nil {
			http.Error(w, "claim: "+err.Error(), http.StatusBadRequest)
			return
		}
		if c.claim == nil {
			http.Error(w, "claim: this runner's VM is not a pooled one", http.StatusConflict)
			return
		}
		if err := c.claim(&cl); err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, errClaimed) {
				code = http.StatusConflict
			}
			http.Error(w, err.Error(), code)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	return mux
}

// Client talks to a runner's control socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the control socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr}}
}

// ErrUnreachable wraps failures to reach the runner at all (no socket, refused).
var ErrUnreachable = errors.New("runner control socket unreachable")

func (c *Client) do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://runner"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnreachable, c.socket, err)
	}
	return resp, nil
}

// Status returns the runner's current status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	resp, err := c.do(ctx, http.MethodGet, "/status", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("runner %s: status: HTTP %d", c.socket, resp.StatusCode)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("runner %s: status: %w", c.socket, err)
	}
	return &st, nil
}

// Stop asks for a graceful guest shutdown; the runner exits when the VM is down.
func (c *Client) Stop(ctx context.Context) error { return c.post(ctx, "/stop") }

// Kill asks the runner to kill the VM now.
func (c *Client) Kill(ctx context.Context) error { return c.post(ctx, "/kill") }

// SetGateway points the runner's gateway bridge at addr (host:port) for new sessions.
func (c *Client) SetGateway(ctx context.Context, addr string) error {
	b, _ := json.Marshal(map[string]string{"addr": addr})
	return c.postBody(ctx, "/gateway", b)
}

func (c *Client) post(ctx context.Context, path string) error { return c.postBody(ctx, path, nil) }

func (c *Client) postBody(ctx context.Context, path string, body []byte) error {
	resp, err := c.do(ctx, http.MethodPost, path, body)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("runner %s: %s: HTTP %d", c.socket, path, resp.StatusCode)
	}
	return nil
}

// Watch calls fn with every status change until the runner reports StateExited, the
// connection ends (runner gone) or ctx ends. It returns nil after StateExited.
func (c *Client) Watch(ctx context.Context, fn func(Status)) error {
	resp, err := c.do(ctx, http.MethodGet, "/watch", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var st Status
		if err := json.Unmarshal(sc.Bytes(), &st); err != nil {
			return fmt.Errorf("runner %s: watch: %w", c.socket, err)
		}
		fn(st)
		if st.State == StateExited {
			return nil
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("runner %s: watch: %w", c.socket, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("runner %s: watch ended without an exit status: %w", c.socket, io.ErrUnexpectedEOF)
}

// UnmarshalJSON also reads the answer of a runner started by an earlier version,
// which named the VMM pid qemu_pid: the driver re-adopts such runners.
func (s *Status) UnmarshalJSON(b []byte) error {
	type plain Status
	var aux struct {
		plain
		LegacyPID int `json:"qemu_pid"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*s = Status(aux.plain)
	if s.VMMPID == 0 {
		s.VMMPID = aux.LegacyPID
	}
	return nil
}
