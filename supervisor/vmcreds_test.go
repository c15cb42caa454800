package supervisor

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
)

// TestFetchPlaceholdersRetriesNotReady: while the runner answers 503 (it has not got
// the credentials from the gateway yet, as right after a warm pool's claim) the guest
// asks again, soon at first, and takes the set once it is there.
func TestFetchPlaceholdersRetriesNotReady(t *testing.T) {
	var asked atomic.Int32
	open := func(ctx context.Context) (net.Conn, error) {
		c, s := net.Pipe()
		go func() {
			defer s.Close()
			req, err := http.ReadRequest(bufio.NewReader(s))
			if err != nil || req.URL.Path != "/v1/credentials" {
				return
			}
			if asked.Add(1) < 4 {
				io.WriteString(s, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nnot ready")
				return
			}
			body := `{"providers":[]}`
			fmt.Fprintf(s, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		}()
		return c, nil
	}
	set, err := fetchPlaceholders(t.Context(), open)
	if err != nil || set == nil {
		t.Fatalf("placeholders: %v", err)
	}
	if n := asked.Load(); n != 4 {
		t.Fatalf("asked %d times, want 4 (three not ready, then the set)", n)
	}
}
