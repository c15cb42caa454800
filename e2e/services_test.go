package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type serviceJSON struct {
	Endpoint struct {
		SandboxName string `json:"sandbox_name"`
		ServiceName string `json:"service_name"`
		TargetPort  int    `json:"target_port"`
	} `json:"endpoint"`
	URL string `json:"url"`
}

// TestServices exposes busybox httpd running in a real sandbox and reaches it through
// the URL the gateway returns (services listener → relay → supervisor → the port
// inside the sandbox); a deleted service and a deleted sandbox's service answer 404.
func TestServices(t *testing.T) {
	h := newHarness(t)
	name := uniqueName("svc")
	www := filepath.Join(t.TempDir(), "index.html")
	if err := os.WriteFile(www, []byte("served-as-a-service\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.mustRun(t, "sandbox", "create", "--name", name, "--from", testImage(), "--timeout", "120s", "--detach",
		"--upload", www+":/sandbox/index.html", "--", "busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/sandbox")

	var svc serviceJSON
	out := h.mustRun(t, "service", "expose", name, "web", "--port", "8080", "-o", "json").stdout
	if err := json.Unmarshal([]byte(out), &svc); err != nil || !strings.HasSuffix(svc.URL, "/"+name+"/web/") || svc.Endpoint.TargetPort != 8080 {
		t.Fatalf("service expose -o json: %v\n%s", err, out)
	}
	get := func(url string) (int, string, error) {
		c := http.Client{Timeout: 20 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	// httpd starts with the sandbox; the upload lands right after READY.
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body, err := get(svc.URL + "index.html")
		if err == nil && code == 200 && body == "served-as-a-service\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %sindex.html: %d %q %v", svc.URL, code, body, err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	var list struct {
		Services []serviceJSON `json:"services"`
	}
	out = h.mustRun(t, "service", "list", name, "-o", "json").stdout
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Services) != 1 || list.Services[0].URL != svc.URL {
		t.Fatalf("service list: %v\n%s", err, out)
	}
	if out := h.mustRun(t, "service", "get", name, "web").stdout; !strings.Contains(out, svc.URL) || !strings.Contains(out, "8080") {
		t.Errorf("service get: %s", out)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"service", "expose", name, "Web", "--port", "8080"}, "service \"Web\""},
		{[]string{"service", "expose", name, "a--b", "--port", "8080"}, "service \"a--b\""},
		{[]string{"service", "expose", name, "web", "--port", "0"}, "--port 0"},
		{[]string{"service", "expose", "no-such-sandbox", "web", "--port", "80"}, "not found"},
		{[]string{"service", "expose", name, "web", "--port", "80", "--domain"}, "services_domain"},
	} {
		r := h.run(t.Context(), bad.args...)
		if r.err == nil || !strings.Contains(r.stderr, bad.want) {
			t.Errorf("openshell %s: err %v, stderr %q; want an error naming %s", strings.Join(bad.args, " "), r.err, r.stderr, bad.want)
		}
	}

	h.mustRun(t, "service", "delete", name, "web")
	if code, _, err := get(svc.URL + "index.html"); err != nil || code != http.StatusNotFound {
		t.Errorf("deleted service: %d %v, want 404", code, err)
	}

	// A deleted sandbox's services are gone.
	h.mustRun(t, "service", "expose", name, "again", "--port", "8080")
	h.mustRun(t, "sandbox", "delete", name)
	out = h.mustRun(t, "service", "list", "-o", "json").stdout
	list.Services = nil
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Services) != 0 {
		t.Errorf("service list after sandbox delete: %v\n%s", err, out)
	}
	again := strings.TrimSuffix(svc.URL, "web/") + "again/"
	if code, _, err := get(again); err != nil || code != http.StatusNotFound {
		t.Errorf("service of a deleted sandbox: %d %v, want 404", code, err)
	}
}
