package egress

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchBytes is the download size: 1 GiB unless OPENSHELL_BENCH_BYTES says otherwise.
func benchBytes() int64 {
	if s := os.Getenv("OPENSHELL_BENCH_BYTES"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 1 << 30
}

// drain reads r to the end with 1 MiB reads (io.Discard would read 8 KiB at a time).
func drain(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func bigServer(b *testing.B, size int64) *upstream {
	return startUpstream(b, "127.0.0.2", false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		buf := make([]byte, 1<<20) // big writes: keep the harness's own CPU cost low
		for left := size; left > 0; {
			n := min(left, int64(len(buf)))
			if _, err := w.Write(buf[:n]); err != nil {
				return
			}
			left -= n
		}
	}))
}

// download fetches size bytes with a raw HTTP/1.1 GET over c (already connected to
// the origin, directly or through a CONNECT tunnel) and returns the elapsed time.
func download(b *testing.B, c net.Conn, host string, size int64) {
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		b.Fatal(err)
	}
	n, err := drain(resp.Body)
	resp.Body.Close()
	if err != nil || n != size {
		b.Fatalf("downloaded %d of %d bytes: %v", n, size, err)
	}
}

func connectThrough(b *testing.B, proxyAddr, target string) net.Conn {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	// Read exactly the 200 head; bufio would swallow tunnel bytes.
	var head []byte
	one := make([]byte, 1)
	for !strings.HasSuffix(string(head), "\r\n\r\n") {
		if _, err := c.Read(one); err != nil {
			b.Fatalf("CONNECT: %v after %q", err, head)
		}
		head = append(head, one[0])
	}
	if !strings.HasPrefix(string(head), "HTTP/1.1 200") {
		b.Fatalf("CONNECT refused: %q", head)
	}
	return c
}

// BenchmarkDownload compares a download through a CONNECT tunnel and through the
// absolute-form forward proxy with the same download made directly. Metrics:
// connect_ratio and forward_ratio (proxied throughput / direct; target ≥ 0.8).
func BenchmarkDownload(b *testing.B) {
	size := benchBytes()
	srv := bigServer(b, size)
	pol := compile(b, fmt.Sprintf("version: 1\nnetwork_policies:\n  bench:\n    endpoints: [{host: %s, port: %d}]\n", srv.host, srv.port))
	_, purl, _ := startProxy(b, Config{Policy: pol, OnEvent: func(Event) {}})
	proxyAddr := strings.TrimPrefix(purl, "http://")
	target := net.JoinHostPort(srv.host, strconv.Itoa(srv.port))
	var direct, tunnel, fwd time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		c, err := net.Dial("tcp", target)
		if err != nil {
			b.Fatal(err)
		}
		download(b, c, target, size)
		c.Close()
		direct += time.Since(t0)

		t0 = time.Now()
		c = connectThrough(b, proxyAddr, target)
		download(b, c, target, size)
		c.Close()
		tunnel += time.Since(t0)

		t0 = time.Now()
		c, err = net.Dial("tcp", proxyAddr)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, target)
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 64<<10), nil)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := drain(resp.Body)
		resp.Body.Close()
		c.Close()
		if n != size {
			b.Fatalf("forward: %d of %d bytes", n, size)
		}
		fwd += time.Since(t0)
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / (1 << 20) }
	b.ReportMetric(mbps(direct), "direct_MiB/s")
	b.ReportMetric(mbps(tunnel), "connect_MiB/s")
	b.ReportMetric(mbps(fwd), "forward_MiB/s")
	b.ReportMetric(direct.Seconds()/tunnel.Seconds(), "connect_ratio")
	b.ReportMetric(direct.Seconds()/fwd.Seconds(), "forward_ratio")
}

// BenchmarkConnectLatency measures what CONNECT adds to opening a connection: time to
// a usable tunnel minus a direct TCP connect. Metrics p50_added_ms and p99_added_ms
// (target p50 < 1 ms).
func BenchmarkConnectLatency(b *testing.B) {
	srv := startUpstream(b, "127.0.0.2", false, nil)
	pol := compile(b, fmt.Sprintf("version: 1\nnetwork_policies:\n  bench:\n    endpoints: [{host: %s, port: %d}]\n", srv.host, srv.port))
	_, purl, _ := startProxy(b, Config{Policy: pol, OnEvent: func(Event) {}})
	proxyAddr := strings.TrimPrefix(purl, "http://")
	target := net.JoinHostPort(srv.host, strconv.Itoa(srv.port))
	var direct, proxied []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		c, err := net.Dial("tcp", target)
		if err != nil {
			b.Fatal(err)
		}
		direct = append(direct, time.Since(t0))
		c.Close()
		t0 = time.Now()
		c = connectThrough(b, proxyAddr, target)
		proxied = append(proxied, time.Since(t0))
		c.Close()
	}
	b.StopTimer()
	slices.Sort(direct)
	slices.Sort(proxied)
	pct := func(d []time.Duration, p float64) time.Duration { return d[min(len(d)-1, int(float64(len(d))*p))] }
	base := pct(direct, 0.5)
	b.ReportMetric(float64(pct(proxied, 0.5)-base)/1e6, "p50_added_ms")
	b.ReportMetric(float64(pct(proxied, 0.99)-base)/1e6, "p99_added_ms")
}
