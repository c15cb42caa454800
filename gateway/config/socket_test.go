package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSocketSettings(t *testing.T) {
	long := "/" + strings.Repeat("s", 200) + "/state"
	for _, tc := range []struct {
		name, socket, group, stateDir, wantPath, wantErr string
	}{
		{name: "default short path", stateDir: long, wantPath: "/gateway.sock"},
		{name: "explicit", socket: "/run/os.sock", stateDir: "/x", wantPath: "/run/os.sock"},
		{name: "off", socket: "none", stateDir: "/x", wantPath: ""},
		{name: "relative", socket: "gw.sock", stateDir: "/x", wantErr: "socket \"gw.sock\" is not an absolute path"},
		{name: "too long", socket: long + ".sock", stateDir: "/x", wantErr: "over the kernel's 107"},
		{name: "group without socket", socket: "none", group: "users", stateDir: "/x", wantErr: "socket_group \"users\" is set but socket is none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			c.StateDir, c.Socket, c.SocketGroup = tc.stateDir, tc.socket, tc.group
			err := c.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p := c.SocketPath()
			if !strings.HasSuffix(p, tc.wantPath) || (tc.wantPath == "") != (p == "") || len(p) > MaxSocketPath {
				t.Errorf("SocketPath = %q, want …%q", p, tc.wantPath)
			}
		})
	}
}

func TestSocketFromEnvAndFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "gw.toml")
	writeFile(t, f, "socket = \"/run/a.sock\"\nsocket_group = \"users\"\n")
	c, err := Resolve(nil, func(k string) string {
		switch k {
		case "OPENSHELL_GATEWAY_CONFIG":
			return f
		case "OPENSHELL_SOCKET_GROUP":
			return "1234"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/run/a.sock" || c.SocketGroup != "1234" {
		t.Errorf("socket %q group %q, want the file's path and the environment's group", c.Socket, c.SocketGroup)
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}
