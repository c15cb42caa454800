package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// `gateway start --config` passes only the flags the user gave, so the file's port and
// bind_address reach the gateway, and the client's endpoint is the file's address.
func TestGatewayArgsLetTheConfigFileWin(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	file := filepath.Join(t.TempDir(), "gw.toml")
	if err := os.WriteFile(file, []byte("port = 17999\nbind_address = \"127.0.0.2\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noEnv := func(string) string { return "" }
	given := func(flags ...string) func(string) bool {
		return func(n string) bool { return slices.Contains(flags, n) }
	}

	o := startOptions{port: 17670, bind: "127.0.0.1", configFile: file, set: given()}
	args, cfg, err := o.gatewayArgs("second", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	if strings.Contains(joined, "--port") || strings.Contains(joined, "--bind-address") {
		t.Errorf("defaults passed to the gateway, hiding the file's values: %s", joined)
	}
	if !strings.Contains(joined, "--config "+file) || !strings.Contains(joined, "--state-dir "+stateDirFor("second")) {
		t.Errorf("args = %s, want --config and the per-name --state-dir", joined)
	}
	if cfg.Port != 17999 || cfg.BindAddress != "127.0.0.2" {
		t.Errorf("resolved address %s:%d, want the file's 127.0.0.2:17999", cfg.BindAddress, cfg.Port)
	}

	// A flag the user typed still wins over the file.
	o = startOptions{port: 18001, bind: "127.0.0.1", configFile: file, set: given("port")}
	args, cfg, err = o.gatewayArgs("second", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(args, " "), "--port 18001") || cfg.Port != 18001 || cfg.BindAddress != "127.0.0.2" {
		t.Errorf("args %v resolved %s:%d, want --port 18001 with the file's bind address", args, cfg.BindAddress, cfg.Port)
	}

	// A state_dir in the file is the gateway's; the CLI neither overrides it nor
	// looks for the pid file elsewhere.
	sd := filepath.Join(t.TempDir(), "state")
	if err := os.WriteFile(file, []byte("state_dir = \""+sd+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o = startOptions{configFile: file, set: given()}
	args, cfg, err = o.gatewayArgs("second", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(args, "--state-dir") || cfg.StateDir != sd || cfg.Port != 17670 {
		t.Errorf("args %v state dir %s port %d, want the file's state dir and the default port", args, cfg.StateDir, cfg.Port)
	}
}

// `gateway start --socket-group G` reaches the gateway as its --socket-group flag
// and wins over the environment; without the flag the environment's group stands.
func TestGatewayStartSocketGroup(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	a := &app{gateway: "sg"}
	cmd := a.gatewayStart()
	f := cmd.Flags().Lookup("socket-group")
	if f == nil || !strings.Contains(f.Usage, "0660") {
		t.Fatalf("gateway start has no --socket-group flag with help text: %+v", f)
	}
	if err := cmd.Flags().Parse([]string{"--socket-group", "staff"}); err != nil {
		t.Fatal(err)
	}
	o := startOptions{socketGroup: f.Value.String(), set: cmd.Flags().Changed}
	env := func(k string) string {
		if k == "OPENSHELL_SOCKET_GROUP" {
			return "fromenv"
		}
		return ""
	}
	args, cfg, err := o.gatewayArgs("sg", env)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(args, " "), "--socket-group staff") || cfg.SocketGroup != "staff" {
		t.Errorf("args %v resolved socket group %q, want --socket-group staff", args, cfg.SocketGroup)
	}
	args, cfg, err = startOptions{}.gatewayArgs("sg", env)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(args, "--socket-group") || cfg.SocketGroup != "fromenv" {
		t.Errorf("args %v resolved socket group %q, want the environment's fromenv and no flag", args, cfg.SocketGroup)
	}
}
