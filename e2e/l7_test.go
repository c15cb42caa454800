package e2e

import (
	"fmt"
	"strings"
	"testing"
)

const l7PolicyTemplate = policyFilesystem + `network_policies:
  api:
    endpoints:
      - host: %[1]s
        port: %[2]d
        protocol: rest
        rules:
          - allow: {method: GET, path: /v1/**}
        deny_rules:
          - {path: /v1/admin/**}
      - host: %[1]s
        port: %[3]d
        protocol: rest
        tls: terminate
        rules:
          - allow:
              method: GET
              path: /public/*
              query:
                lang: {any: [en, de]}
    binaries:
      - path: /usr/bin/curl
`

// TestL7Rules drives REST L7 rules through the real binaries on the docker driver:
// the sandbox's egress proxy applies rules and deny_rules to plain HTTP requests and
// to requests inside a tunnel it terminates with the sandbox CA, refuses with a 403
// naming the endpoint, method and path, never contacts the server for a refused
// request, and ships the decisions to the sandbox logs.
func TestL7Rules(t *testing.T) {
	if driver() == "vm" {
		t.Skip("the L7 e2e runs on the container drivers (as the policy e2e)")
	}
	h := newHarness(t)
	ensurePolicyImage(t)

	cert, caPEM := testCA(t, gatewayHostName)
	plain := startCountingServer(t, "plain", nil)
	secure := startCountingServer(t, "secure", cert)

	dir := t.TempDir()
	polFile := writePolicy(t, dir, fmt.Sprintf(l7PolicyTemplate, gatewayHostName, plain.port(), secure.port()))
	// No provider: the sandbox CA that terminated tunnels need exists in every sandbox.
	box := uniqueName("l7")
	h.mustRun(t, "sandbox", "create", "--name", box, "--from", policyTestImage, "--timeout", "120s",
		"--policy", polFile, "--", "bash", "-c", "while true; do sleep 1; done")
	trustTestCA(t, box, caPEM)
	// curl prints the body, then the status on a line of its own.
	curl := func(t *testing.T, args string) (int, string) {
		t.Helper()
		r := h.run(t.Context(), "sandbox", "exec", "-n", box, "--", "bash", "-c", "curl -sS -m 15 -w '\\n%{http_code}' "+args)
		out := strings.TrimSpace(r.stdout)
		i := strings.LastIndexByte(out, '\n')
		var code int
		if _, err := fmt.Sscan(out[i+1:], &code); err != nil {
			t.Fatalf("curl %s: exit %d stdout %q stderr %q", args, r.code, r.stdout, r.stderr)
		}
		return code, out[:max(i, 0)]
	}
	plainURL := fmt.Sprintf("http://%s:%d", gatewayHostName, plain.port())
	secureURL := fmt.Sprintf("https://%s:%d", gatewayHostName, secure.port())

	for _, tc := range []struct {
		name, args string
		server     *countingServer
		code       int
		want       string
	}{
		{"plain allowed", plainURL + "/v1/items", plain, 200, "hello-plain"},
		{"plain deny wins", plainURL + "/v1/admin/users", plain, 403, "GET /v1/admin/users matches deny_rules[0] of network_policies.api.endpoints[0]"},
		{"plain method not allowed", "-X POST " + plainURL + "/v1/items", plain, 403, "POST /v1/items is not allowed by any rules entry of network_policies.api.endpoints[0]"},
		{"plain dot segments", "--path-as-is " + plainURL + "/v1/x/../admin/users", plain, 403, ". or .. segment"},
		{"terminated allowed", "'" + secureURL + "/public/readme?lang=de'", secure, 200, "hello-secure"},
		{"terminated query refused", "'" + secureURL + "/public/readme?lang=fr'", secure, 403, "GET /public/readme is not allowed by any rules entry of network_policies.api.endpoints[1]"},
		{"terminated path refused", "'" + secureURL + "/private/x?lang=en'", secure, 403, "GET /private/x is not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.server.conns.Load()
			code, body := curl(t, tc.args)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Fatalf("got %d %q, want %d %q", code, body, tc.code, tc.want)
			}
			after := tc.server.conns.Load()
			if tc.code == 403 && after != before {
				t.Fatalf("the server saw %d connections for a refused request", after-before)
			}
			if tc.code == 200 && after == before {
				t.Fatal("the server saw no connection for an allowed request")
			}
		})
	}
	t.Run("decisions are in sandbox logs", func(t *testing.T) {
		waitLogs(t, h, box, fmt.Sprintf(`egress deny GET %s:%d binary=/usr/bin/curl`, gatewayHostName, plain.port()))
		waitLogs(t, h, box, `path="/v1/admin/users"`)
		waitLogs(t, h, box, `path="/private/x"`)
	})
}
