package session

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/grpcopts"
	"github.com/openshell/openshell/internal/instancemd"
	"github.com/openshell/openshell/internal/relayframe"
	"github.com/openshell/openshell/internal/streamconn"
)

// RelayChunk is the largest data frame the supervisor sends on a relay: one read of
// a relayed socket (or one send of the in-process SSH server's queued packets) takes
// whatever is queued, up to this much, so bulk transfers pay per-frame costs rarely.
const RelayChunk = grpcopts.RelayChunk

// Identity is this supervisor boot as the gateway binds it: the instance id and the
// per-boot instance secret. The gateway binds the sandbox's session to the first
// identity it sees and refuses another while that one is live, so a stolen sandbox
// token alone cannot take the session over.
type Identity struct {
	InstanceID string
	Secret     string
}

// Outgoing returns ctx carrying the identity as call metadata.
func (id Identity) Outgoing(ctx context.Context) context.Context {
	kv := []string{instancemd.InstanceID, id.InstanceID}
	if id.Secret != "" {
		kv = append(kv, instancemd.InstanceSecret, id.Secret)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// Config configures a Client.
type Config struct {
	SandboxID  string
	InstanceID string // random per supervisor process; NewInstanceID makes one
	// InstanceSecret is this boot's instance secret (bootstrap.Config.InstanceSecret
	// when the driver minted one); empty = New mints one, kept in memory only.
	InstanceSecret string
	// HostKey is the SSH server's public host key, registered with the gateway when
	// the session opens; the gateway's SSH clients accept no other.
	HostKey ssh.PublicKey
	// ServeSSH serves one SSH connection in-process until it ends; ctx ends with Run
	// (the connection itself ends with the relay). When set, SSH relays hand it the
	// RelayStream as a net.Conn: no socket and no copying in between.
	ServeSSH func(ctx context.Context, c net.Conn)
	// ServeTransfer serves one file-transfer relay in-process (the tar stream over the
	// RelayStream itself, no SSH); nil = transfer relays are refused.
	ServeTransfer func(ctx context.Context, c net.Conn, t *pb.TransferRelayTarget)
	// DialBulk opens a bulk stream to the host end of the VM's channel (see
	// relayframe.Open): a transfer relay's bytes then skip gRPC in the guest. nil, or
	// a stream the host refuses, = the transfer goes over RelayStream.
	DialBulk func(ctx context.Context) (net.Conn, error)
	// ServeExec runs one command on an exec relay in-process (framed stdio over the
	// RelayStream itself, no SSH); nil = exec relays are refused.
	ServeExec func(ctx context.Context, c net.Conn, t *pb.ExecRelayTarget)
	// DialSSH connects to an SSH server (e.g. on a Unix socket); used for SSH relays
	// when ServeSSH is nil.
	DialSSH func(ctx context.Context) (net.Conn, error)
	// DialTCP connects to a loopback port for a TCP relay (a forward): the agent's
	// loopback, in its network namespace when it has its own. nil = this process's.
	DialTCP func(ctx context.Context, addr string) (net.Conn, error)
	// BackoffMin/Max pace reconnects; 0 = 1 s and 30 s.
	BackoffMin, BackoffMax time.Duration
	// HostReturns delivers a value when the host end of a VM's channel came back (the
	// VM was restored): a session that is down redials at once instead of waiting out
	// its backoff, and the gRPC connection's own. nil: none.
	HostReturns <-chan struct{}
	// OnState is told when the session goes up (true) or down (false); optional.
	OnState func(up bool)
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	switch {
	case c.SandboxID == "":
		return errors.New("session: Config.SandboxID is empty: set OPENSHELL_SANDBOX_ID")
	case c.InstanceID == "":
		return errors.New("session: Config.InstanceID is empty: use NewInstanceID")
	case c.ServeSSH == nil && c.DialSSH == nil:
		return errors.New("session: Config.ServeSSH and Config.DialSSH are both nil: give the SSH server's ServeConn (or a dialer)")
	case c.HostKey == nil:
		return errors.New("session: Config.HostKey is nil: give the SSH server's HostKey() (the gateway pins it and talks SSH to no other key)")
	}
	return nil
}

// NewInstanceID returns a random supervisor instance id.
func NewInstanceID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewInstanceSecret returns a random instance secret (32 bytes, hex).
func NewInstanceSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Client keeps the supervisor's session with the gateway.
type Client struct {
	cfg Config
	api pb.OpenShellClient
	cc  grpc.ClientConnInterface

	relays sync.WaitGroup
	up     atomic.Bool
	// bulkRetry: unix ns before which DialBulk is not tried again (its last
	// failure was slow; see openBulk).
	bulkRetry atomic.Int64
	// sessions counts accepted sessions (tests and status).
	sessions atomic.Int64
	// transportDrops counts the times the gateway connection stopped being ready
	// (watched while Run runs): a session that failed on a connection that went down
	// and is back by the time the retry's wait starts is retried at once.
	transportDrops atomic.Int64
	// beforeSleep, when set (tests), runs between a failed session and its wait.
	beforeSleep func()
}

// New returns a client over an existing gRPC connection (see Dial).
func New(cc grpc.ClientConnInterface, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	if cfg.InstanceSecret == "" {
		cfg.InstanceSecret = NewInstanceSecret()
	}
	return &Client{cfg: cfg, api: pb.NewOpenShellClient(cc), cc: cc}, nil
}

// Identity is the instance this client presents to the gateway.
func (c *Client) Identity() Identity {
	return Identity{InstanceID: c.cfg.InstanceID, Secret: c.cfg.InstanceSecret}
}

// API is the underlying gRPC client (for the log shipper and config polling).
func (c *Client) API() pb.OpenShellClient { return c.api }

// Up reports whether a session is currently accepted.
func (c *Client) Up() bool { return c.up.Load() }

// Sessions is how many sessions the gateway accepted so far.
func (c *Client) Sessions() int64 { return c.sessions.Load() }

// Backoff returns the wait before retry n (0-based): min·2ⁿ capped at max, with
// ±20 % jitter so that many sandboxes do not reconnect in lockstep.
func Backoff(n int, min, max time.Duration) time.Duration {
	d := min
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	j := time.Duration(float64(d) * (0.8 + 0.4*mrand.Float64()))
	return j
}

// Run keeps a session open until ctx ends, reconnecting after any break. Relays
// opened by a session outlive it; Run waits for them before returning.
func (c *Client) Run(ctx context.Context) error {
	defer c.relays.Wait()
	if cc, ok := c.cc.(*grpc.ClientConn); ok {
		go c.watchTransport(ctx, cc)
	}
	fails := 0
	for {
		drops := c.transportDrops.Load()
		accepted, err := c.runOnce(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if accepted {
			fails = 0
		}
		wait := Backoff(fails, c.cfg.BackoffMin, c.cfg.BackoffMax)
		fails++
		slog.Warn("gateway session ended; reconnecting", "err", err, "retry_in", wait.Round(time.Millisecond))
		if c.beforeSleep != nil {
			c.beforeSleep()
		}
		c.sleep(ctx, wait, drops)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// watchTransport counts the gateway connection's drops (it leaves ready) until ctx
// ends. A drop is counted as it happens, whatever state comes next.
func (c *Client) watchTransport(ctx context.Context, cc *grpc.ClientConn) {
	for s := cc.GetState(); cc.WaitForStateChange(ctx, s); s = cc.GetState() {
		if s == connectivity.Ready {
			c.transportDrops.Add(1)
		}
	}
}

// sleep waits d, or less when the connection to the gateway was down and comes back
// (the transport redials with its own backoff): a restarted gateway gets its session
// at once instead of at the end of a long backoff. That includes a connection that
// dropped and came back before this wait (dropsBefore is the count of drops when the
// failed session started), and one that drops during the wait. A gateway that is
// reachable but refuses the session is not retried early: its connection stays up. A host return
// (HostReturns) makes the transport redial now, and the session is retried as soon
// as it is up: not at once, as a call made while the transport still reports the
// failure from before the return fails at once, and would wait out the next backoff.
func (c *Client) sleep(ctx context.Context, d time.Duration, dropsBefore int64) {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	cc, ok := c.cc.(*grpc.ClientConn)
	if c.cfg.HostReturns != nil {
		go func() {
			select {
			case <-c.cfg.HostReturns:
				if ok {
					cc.ResetConnectBackoff()
					for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
						if s == connectivity.Idle {
							cc.Connect()
						}
						if !cc.WaitForStateChange(wctx, s) {
							return
						}
					}
				}
				cancel() // retry now
			case <-wctx.Done():
			}
		}()
	}
	if !ok {
		<-wctx.Done()
		return
	}
	if cc.GetState() == connectivity.Ready {
		if c.transportDrops.Load() != dropsBefore {
			return // back already: the session failed on the connection that went
		}
		// Up through the failed session, as far as the connection has noticed: a
		// refusal, which waits. A drop it notices later (the session's stream may
		// see the end of its connection first) ends the wait when it is back.
		if !cc.WaitForStateChange(wctx, connectivity.Ready) {
			return
		}
	}
	for {
		s := cc.GetState()
		if s == connectivity.Ready {
			return
		}
		if s == connectivity.Idle {
			cc.Connect()
		}
		if !cc.WaitForStateChange(wctx, s) {
			return
		}
	}
}

func (c *Client) setUp(up bool) {
	if c.up.Swap(up) != up && c.cfg.OnState != nil {
		c.cfg.OnState(up)
	}
}

// runOnce runs one ConnectSupervisor stream; accepted tells whether the gateway
// accepted it (then the next retry starts from the shortest backoff).
func (c *Client) runOnce(ctx context.Context) (accepted bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	octx := metadata.AppendToOutgoingContext(c.Identity().Outgoing(sctx),
		instancemd.HostKey, base64.StdEncoding.EncodeToString(c.cfg.HostKey.Marshal()))
	stream, err := c.api.ConnectSupervisor(octx)
	if err != nil {
		return false, fmt.Errorf("open ConnectSupervisor: %w", err)
	}
	var sendMu sync.Mutex
	send := func(m *pb.SupervisorMessage) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	if err := send(&pb.SupervisorMessage{Payload: &pb.SupervisorMessage_Hello{Hello: &pb.SupervisorHello{
		SandboxId: c.cfg.SandboxID, InstanceId: c.cfg.InstanceID}}}); err != nil {
		return false, fmt.Errorf("send hello: %w", streamErr(stream, err))
	}
	first, err := stream.Recv()
	if err != nil {
		return false, fmt.Errorf("await session_accepted: %w", err)
	}
	var interval time.Duration
	switch p := first.Payload.(type) {
	case *pb.GatewayMessage_SessionAccepted:
		interval = time.Duration(p.SessionAccepted.GetHeartbeatIntervalSecs()) * time.Second
		slog.Info("gateway session accepted", "session_id", p.SessionAccepted.GetSessionId())
	case *pb.GatewayMessage_SessionRejected:
		return false, fmt.Errorf("gateway rejected the session: %s", p.SessionRejected.GetReason())
	default:
		return false, fmt.Errorf("gateway sent %T before session_accepted", first.Payload)
	}
	if interval <= 0 {
		interval = 15 * time.Second
	}
	c.sessions.Add(1)
	c.setUp(true)
	defer c.setUp(false)

	var lastRecv atomic.Int64
	lastRecv.Store(time.Now().UnixNano())
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
			if err := send(&pb.SupervisorMessage{Payload: &pb.SupervisorMessage_Heartbeat{Heartbeat: &pb.SupervisorHeartbeat{}}}); err != nil {
				cancel()
				return
			}
			// Three silent intervals: the gateway is gone without closing the stream.
			if time.Since(time.Unix(0, lastRecv.Load())) > 3*interval {
				slog.Warn("gateway silent for three heartbeat intervals; reconnecting")
				cancel()
				return
			}
		}
	}()

	relays := map[string]context.CancelFunc{}
	var relaysMu sync.Mutex
	for {
		msg, err := stream.Recv()
		if err != nil {
			return true, err
		}
		lastRecv.Store(time.Now().UnixNano())
		switch p := msg.Payload.(type) {
		case *pb.GatewayMessage_RelayOpen:
			open := p.RelayOpen
			rctx, rcancel := context.WithCancel(context.WithoutCancel(ctx))
			stop := context.AfterFunc(ctx, rcancel) // relays end with Run, not with this stream
			relaysMu.Lock()
			relays[open.GetChannelId()] = rcancel
			relaysMu.Unlock()
			c.relays.Add(1)
			go func() {
				defer c.relays.Done()
				defer stop()
				defer rcancel()
				defer func() {
					relaysMu.Lock()
					delete(relays, open.GetChannelId())
					relaysMu.Unlock()
				}()
				c.relay(rctx, ctx, open, send)
			}()
		case *pb.GatewayMessage_RelayClose:
			relaysMu.Lock()
			if rc := relays[p.RelayClose.GetChannelId()]; rc != nil {
				rc()
			}
			relaysMu.Unlock()
		case *pb.GatewayMessage_Heartbeat, *pb.GatewayMessage_SessionAccepted:
		case *pb.GatewayMessage_SessionRejected:
			return true, fmt.Errorf("gateway ended the session: %s", p.SessionRejected.GetReason())
		}
	}
}

func streamErr(s grpc.ClientStream, err error) error {
	if errors.Is(err, io.EOF) {
		// The real status arrives on Recv.
		if _, rerr := s.(interface {
			Recv() (*pb.GatewayMessage, error)
		}).Recv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// dialTarget connects to what a relay_open names: a loopback TCP port inside the
// sandbox, or the SSH server through DialSSH.
func (c *Client) dialTarget(ctx context.Context, open *pb.RelayOpen) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if t := open.GetTcp(); t != nil {
		host := t.GetHost()
		if !isLoopback(host) {
			return nil, fmt.Errorf("relay target %s is not loopback: only 127.0.0.1, ::1 or localhost inside the sandbox can be reached", host)
		}
		if t.GetPort() == 0 || t.GetPort() > 65535 {
			return nil, fmt.Errorf("relay target port %d is out of range 1-65535", t.GetPort())
		}
		addr := net.JoinHostPort(host, strconv.Itoa(int(t.GetPort())))
		if c.cfg.DialTCP != nil {
			return c.cfg.DialTCP(dctx, addr)
		}
		var d net.Dialer
		return d.DialContext(dctx, "tcp", addr)
	}
	return c.cfg.DialSSH(dctx) // ssh target, or no target (= ssh)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// relay serves one relay_open: dial (unless the SSH server runs in-process), open
// RelayStream, report, then pump bytes or serve SSH on the stream. ctx ends the
// relay; life (Run's context) bounds what the SSH server starts, so that a relay
// ending hangs its programs up the same way a dropped SSH connection does.
func (c *Client) relay(ctx, life context.Context, open *pb.RelayOpen, send func(*pb.SupervisorMessage) error) {
	id := open.GetChannelId()
	log := slog.With("channel_id", id)
	result := func(err error) {
		r := &pb.RelayOpenResult{ChannelId: id, Success: err == nil}
		if err != nil {
			r.Error = err.Error()
		}
		if serr := send(&pb.SupervisorMessage{Payload: &pb.SupervisorMessage_RelayOpenResult{RelayOpenResult: r}}); serr != nil {
			log.Debug("relay: could not send relay_open_result", "err", serr)
		}
	}
	if id == "" {
		result(errors.New("relay_open without channel_id"))
		return
	}
	xfer := open.GetTransfer()
	if xfer != nil && c.cfg.ServeTransfer == nil {
		result(errors.New("this supervisor does not serve file transfers on a relay of their own; upgrade openshell-sandbox"))
		return
	}
	if xfer != nil && c.cfg.DialBulk != nil && time.Now().UnixNano() >= c.bulkRetry.Load() {
		if bc, err := c.openBulk(ctx, id); err != nil {
			log.Warn("relay: no bulk stream for this transfer; it goes over the session", "err", err)
		} else {
			result(nil)
			c.cfg.ServeTransfer(ctx, bc, xfer)
			_ = bc.Close()
			_ = send(&pb.SupervisorMessage{Payload: &pb.SupervisorMessage_RelayClose{RelayClose: &pb.RelayClose{ChannelId: id, Reason: "closed"}}})
			return
		}
	}
	ex := open.GetExec()
	if c.cfg.ServeExec == nil {
		// Answered as an older supervisor answers a target it does not know: with
		// SSH, which the gateway recognises and runs the exec over.
		ex = nil
	}
	inProcess := xfer != nil || ex != nil || open.GetTcp() == nil && c.cfg.ServeSSH != nil // no target = ssh
	var conn net.Conn
	if !inProcess {
		var err error
		if conn, err = c.dialTarget(ctx, open); err != nil {
			log.Warn("relay: dial target failed", "err", err)
			result(err)
			return
		}
		defer conn.Close()
	}
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	rs, err := c.api.RelayStream(c.Identity().Outgoing(sctx))
	if err != nil {
		result(fmt.Errorf("open RelayStream: %w", err))
		return
	}
	if err := rs.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Init{Init: &pb.RelayInit{ChannelId: id}}}); err != nil {
		result(fmt.Errorf("send relay init: %w", err))
		return
	}
	result(nil)
	if inProcess {
		sc := streamconn.New(sctx, streamconn.Bidi(rs, relayData, (*pb.RelayFrame).GetData), scancel, "openshell-relay")
		switch {
		case xfer != nil:
			c.cfg.ServeTransfer(sctx, sc, xfer)
		case ex != nil:
			c.cfg.ServeExec(sctx, sc, ex)
		default:
			c.cfg.ServeSSH(life, sc)
		}
		_ = sc.Close()
	} else {
		Pump(ctx, conn, rs)
	}
	_ = send(&pb.SupervisorMessage{Payload: &pb.SupervisorMessage_RelayClose{RelayClose: &pb.RelayClose{ChannelId: id, Reason: "closed"}}})
}

// bulkDialWait bounds dialing the bulk port: a host end that does not serve it
// would otherwise be retried until the relay's context ends.
const bulkDialWait = 3 * time.Second

// A bulk dial that failed in under bulkSlowDial is tried again on the next transfer;
// one that took longer is not tried again for bulkRetryAfter.
const (
	bulkSlowDial   = 100 * time.Millisecond
	bulkRetryAfter = time.Minute
)

// openBulk opens relay id on a new bulk stream. A dial that fails at once (a
// container's bulk socket that is not there) is tried again on the next transfer:
// it costs nothing, and a restarted gateway re-creates the socket. A dial that fails
// slowly (a VM's vsock port nobody serves answers after ~2 s) would slow every
// transfer, so bulk streams rest for bulkRetryAfter. A refusal does neither.
func (c *Client) openBulk(ctx context.Context, id string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, bulkDialWait)
	defer cancel()
	start := time.Now()
	bc, err := c.cfg.DialBulk(dctx)
	if err != nil {
		if now := time.Now(); now.Sub(start) >= bulkSlowDial {
			c.bulkRetry.Store(now.Add(bulkRetryAfter).UnixNano())
		}
		return nil, fmt.Errorf("dial the bulk port: %w", err)
	}
	stop := context.AfterFunc(dctx, func() { bc.Close() })
	err = relayframe.OpenBulk(bc, relayframe.Open{ChannelID: id, InstanceID: c.cfg.InstanceID, InstanceSecret: c.cfg.InstanceSecret})
	if !stop() && err == nil {
		err = dctx.Err() // closed just as the answer came
	}
	if err != nil {
		bc.Close()
		return nil, err
	}
	return bc, nil
}

// relayData is a RelayStream data frame.
func relayData(b []byte) *pb.RelayFrame {
	return &pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: b}}
}

// Pump copies bytes between conn and a RelayStream until both directions end or one
// fails. A clean end of one direction is passed on as a half-close.
func Pump(ctx context.Context, conn net.Conn, rs grpc.BidiStreamingClient[pb.RelayFrame, pb.RelayFrame]) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	go func() { // gateway → target
		defer func() { done <- struct{}{} }()
		for {
			f, err := rs.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					closeWrite(conn)
					return
				}
				cancel()
				return
			}
			if d := f.GetData(); len(d) > 0 {
				if _, err := conn.Write(d); err != nil {
					cancel()
					return
				}
			}
		}
	}()
	go func() { // target → gateway
		defer func() { done <- struct{}{} }()
		buf := make([]byte, RelayChunk)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				// Send marshals before it returns (no stats handler keeps the
				// message), so buf is reused without a per-frame copy.
				if serr := rs.Send(&pb.RelayFrame{Payload: &pb.RelayFrame_Data{Data: buf[:n]}}); serr != nil {
					cancel()
					return
				}
			}
			if err != nil {
				_ = rs.CloseSend()
				if !errors.Is(err, io.EOF) {
					cancel()
				}
				return
			}
		}
	}()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// ReportExit reports the main process's exit, retrying with backoff until the
// gateway acknowledges it, refuses it for good, or ctx ends.
func (c *Client) ReportExit(ctx context.Context, code int) error {
	req := &pb.ReportMainProcessExitRequest{SandboxId: c.cfg.SandboxID, InstanceId: c.cfg.InstanceID, ExitCode: int32(code)}
	octx := c.Identity().Outgoing(ctx)
	for n := 0; ; n++ {
		_, err := c.api.ReportMainProcessExit(octx, req)
		if err == nil {
			return nil
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.Unimplemented:
			return fmt.Errorf("session: gateway refused the main-process exit report: %w", err)
		}
		wait := Backoff(n, 500*time.Millisecond, 10*time.Second)
		slog.Debug("exit report failed; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return fmt.Errorf("session: exit report not acknowledged: %w", errors.Join(ctx.Err(), err))
		case <-time.After(wait):
		}
	}
}
