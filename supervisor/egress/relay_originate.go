package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// The host side of originated TLS and of GET /v1/credentials (see relay.go): the
// VM runner keeps the sandbox's credential store, so that real values exist only on
// the host.

// HostSecrets is what the relay needs from the sandbox's credential store
// (credentials.Store implements it).
type HostSecrets interface {
	// Rewrite replaces placeholders in h with real values (see Credentials.Rewrite);
	// an error names the mismatch, never a value.
	Rewrite(host string, overTLS bool, h http.Header) error
	// Placeholders is what the guest may know: placeholders and bound hosts.
	Placeholders() []PlaceholderProvider
	// Values are the real values, masked in answers before they reach the guest.
	Values() []string
}

// maxOriginHead bounds the head of an originated request: the guest proxy's bound.
const maxOriginHead = maxHeaderBytes

// handshake makes the TLS connection to host over up, verifying the server against
// UpstreamTLS's roots (system roots when unset).
func (r *Relay) handshake(ctx context.Context, up net.Conn, host string) (*tls.Conn, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if r.UpstreamTLS != nil {
		cfg = r.UpstreamTLS.Clone()
	}
	cfg.ServerName = strings.Trim(host, "[]")
	cfg.NextProtos = nil // HTTP/1.1 only: the request is relayed as it was written
	tc := tls.Client(up, cfg)
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return nil, fmt.Errorf("TLS to %s: %w", host, err)
	}
	return tc, nil
}

// originate relays one plaintext request from the guest over the TLS connection up
// to host:port, with the credential values put in, and copies the response back.
// Refusals are answered as the response (the tunnel is already open).
func (r *Relay) originate(c net.Conn, st *stream, up net.Conn, host string, port int, sec HostSecrets, ev Event) {
	st.lr.N = maxOriginHead
	c.SetReadDeadline(time.Now().Add(st.rt))
	req, err := http.ReadRequest(st.br)
	c.SetReadDeadline(time.Time{})
	st.lr.N = 1<<63 - 1
	if err != nil {
		r.log().Debug("egress relay: unreadable request inside originated TLS", "host", host, "err", err)
		writeError(c, http.StatusBadRequest, "egress relay: malformed request: "+err.Error())
		return
	}
	defer req.Body.Close()
	ev.Method, ev.Path = req.Method, req.URL.EscapedPath()
	if err := CheckTunnelHost(req, host, port); err != nil {
		r.refuse(c, ev, http.StatusForbidden, err.Error())
		return
	}
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	if sec != nil {
		if err := sec.Rewrite(host, true, req.Header); err != nil {
			r.refuse(c, ev, http.StatusForbidden, err.Error())
			return
		}
	}
	req.Close = true // one request per stream; the upstream closes after its answer
	req.RequestURI = ""
	// The body is sent while the answer is relayed: a server may answer (and stop
	// reading) before the body ends.
	werr := make(chan error, 1)
	go func() {
		err := req.Write(up)
		if err != nil {
			up.Close() // ends the copy below
		}
		werr <- err
	}()
	var w io.Writer = c
	var m *masker
	if sec != nil {
		if m = newMasker(c, sec.Values()); m != nil {
			w = m
		}
	}
	io.Copy(w, up)
	if m != nil {
		m.flush()
	}
	up.Close()
	// The answer is complete: tell the guest, whose proxy then closes the stream,
	// which ends a body the server did not wait for.
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	if err := <-werr; err != nil {
		r.log().Debug("egress relay: sending an originated request failed", "host", host, "port", port, "err", err)
	}
}

// placeholders answers GET /v1/credentials.
func (r *Relay) placeholders(c net.Conn) {
	set := PlaceholderSet{Providers: []PlaceholderProvider{}}
	if r.Secrets != nil {
		sec := r.Secrets()
		if sec == nil {
			writeError(c, http.StatusServiceUnavailable, errSecretsUnknown)
			return
		}
		if ps := sec.Placeholders(); ps != nil {
			set.Providers = ps
		}
	}
	b, err := json.Marshal(set)
	if err != nil {
		writeError(c, http.StatusInternalServerError, err.Error())
		return
	}
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(b), b)
}

// originate opens a Config.OriginateTLS stream, bounded like a dial.
func (p *Proxy) originate(ctx context.Context, host string, addr netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	return p.cfg.OriginateTLS(ctx, host, addr)
}

// masker replaces every real value in the bytes of an answer with as many '*', so
// that a server that echoes a request header (an error page, a debugging endpoint)
// does not hand the value to the guest. The length stays, so the answer's framing
// (Content-Length, chunk sizes) is untouched. Only the bytes that could begin a value
// are held back between writes, so a streamed answer is not delayed.
type masker struct {
	w    io.Writer
	vals [][]byte
	pend []byte
}

func newMasker(w io.Writer, vals []string) *masker {
	m := &masker{w: w}
	for _, v := range vals {
		if len(v) >= 4 { // shorter ones would mask ordinary text
			m.vals = append(m.vals, []byte(v))
		}
	}
	if len(m.vals) == 0 {
		return nil
	}
	return m
}

func (m *masker) Write(p []byte) (int, error) {
	buf := append(m.pend, p...)
	for _, v := range m.vals {
		for i := 0; ; {
			j := bytes.Index(buf[i:], v)
			if j < 0 {
				break
			}
			for k := range v {
				buf[i+j+k] = '*'
			}
			i += j + len(v)
		}
	}
	keep := 0
	for _, v := range m.vals {
		for k := min(len(v)-1, len(buf)); k > keep; k-- {
			if bytes.HasSuffix(buf, v[:k]) {
				keep = k
				break
			}
		}
	}
	if _, err := m.w.Write(buf[:len(buf)-keep]); err != nil {
		return 0, err
	}
	m.pend = append(m.pend[:0], buf[len(buf)-keep:]...)
	return len(p), nil
}

// flush writes what was held back (the answer ended without completing a value).
func (m *masker) flush() {
	if len(m.pend) > 0 {
		m.w.Write(m.pend)
		m.pend = m.pend[:0]
	}
}
