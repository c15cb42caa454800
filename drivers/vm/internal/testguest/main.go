//go:build linux

// Command testguest is a stand-in supervisor for the VM driver's tests: built static
// and put into the initramfs as /init instead of openshell-sandbox. Like the real
// supervisor it fetches its bootstrap config on the bootstrap port and then holds a
// session on the gateway port (bridged by the runner to the gateway address); the
// "session" here is one JSON Report line, after which it waits for the host to say
// "poweroff" (clean guest power-off) or to close (it then reconnects, as a supervisor
// does after a gateway restart). It remembers the previous boot on the overlay root.
// With the command "exec-echo" it also serves ExecEchoPort (see exececho.go), the
// baseline of the exec benchmark; with "xfer" it serves XferPort (xfer.go), the raw
// channel leg of the transfer benchmark. With "probe-gateway ID TOKEN" it attacks a real
// gateway through the runner (gatewayprobe.go), prints the outcomes and waits. With the command "probe-channel" it first tries, as an agent would, what the runner
// must refuse on its channel ports (see probe.go) and reports the outcomes.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/guest"
	"github.com/openshell/openshell/guest/channel"
	"github.com/openshell/openshell/guest/channel/wire"
	"github.com/openshell/openshell/supervisor/bootstrap"
)

// Report is what the guest sends on each gateway connection.
type Report struct {
	SandboxID string   `json:"sandbox_id"`
	Endpoint  string   `json:"endpoint"`
	HasToken  bool     `json:"has_token"`
	Command   []string `json:"command"`
	BootID    string   `json:"boot_id"`
	Prev      string   `json:"prev"` // boot id recorded by the previous boot ("" = first boot)
	Conn      int      `json:"conn"` // 1 for the first gateway connection of this boot
	// Probes are the outcomes of the channel probes (command "probe-channel").
	Probes map[string]string `json:"probes,omitempty"`
}

const persistFile = "/var/lib/openshell-testguest"

func main() {
	if !guest.IsPID1() {
		fmt.Fprintln(os.Stderr, "testguest must run as PID 1 inside a VM")
		os.Exit(2)
	}
	guest.RunPID1(guest.InitOptions{}, run)
}

func run() int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, secret, err := fetchBootstrap(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testguest: bootstrap:", err)
		return 1
	}
	r := Report{SandboxID: cfg.SandboxID, Endpoint: cfg.Endpoint, HasToken: cfg.Token != "", Command: cfg.Main.Command}
	if len(cfg.Main.Command) > 0 && cfg.Main.Command[0] == "probe-channel" {
		r.Probes = probeChannel(secret, cfg.SandboxID)
	}
	if c := cfg.Main.Command; len(c) == 3 && c[0] == "probe-gateway" {
		// The gateway here is the real one: no report lines to send it afterwards.
		probeGateway(secret, cfg, c[1], c[2])
		select {}
	}
	if len(cfg.Main.Command) > 0 && cfg.Main.Command[0] == "exec-echo" {
		if err := serveExecEcho(); err != nil {
			fmt.Fprintln(os.Stderr, "testguest: exec-echo:", err)
			return 1
		}
	}
	if len(cfg.Main.Command) > 0 && cfg.Main.Command[0] == "xfer" {
		if err := serveXfer(); err != nil {
			fmt.Fprintln(os.Stderr, "testguest: xfer:", err)
			return 1
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		r.BootID = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(persistFile); err == nil {
		r.Prev = strings.TrimSpace(string(b))
	}
	_ = os.MkdirAll("/var/lib", 0o755)
	if f, err := os.Create(persistFile); err == nil {
		fmt.Fprintln(f, r.BootID)
		_ = f.Sync()
		_ = f.Close()
	}
	unix.Sync()
	fmt.Printf("openshell-testguest: sandbox=%s boot_id=%s prev=%q\n", r.SandboxID, r.BootID, r.Prev)

	for {
		r.Conn++
		gc, err := channel.DialHostAs(context.Background(), channel.PortGateway, secret)
		if err != nil {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if err := json.NewEncoder(gc).Encode(r); err == nil {
			sc := bufio.NewScanner(gc)
			for sc.Scan() {
				if strings.TrimSpace(sc.Text()) == "poweroff" {
					gc.Close()
					fmt.Println("openshell-testguest: powering off on request")
					return 0
				}
			}
		}
		gc.Close()
		time.Sleep(500 * time.Millisecond)
	}
}

// fetchBootstrap runs the bootstrap handshake as the supervisor does: decode,
// acknowledge, wait for the host to confirm the port is closed; retry on failure.
func fetchBootstrap(ctx context.Context) (*bootstrap.Config, wire.Secret, error) {
	for {
		c, err := channel.DialHost(ctx, channel.PortBootstrap)
		if err != nil {
			return nil, wire.Secret{}, err
		}
		var cfg bootstrap.Config
		err = json.NewDecoder(c).Decode(&cfg)
		if err == nil {
			var secret wire.Secret
			if secret, err = wire.ParseSecret(cfg.InstanceSecret); err == nil {
				if err = channel.AckBootstrap(c, 10*time.Second); err == nil {
					c.Close()
					return &cfg, secret, nil
				}
			}
		}
		c.Close()
		fmt.Fprintln(os.Stderr, "testguest: bootstrap attempt failed, retrying:", err)
		select {
		case <-ctx.Done():
			return nil, wire.Secret{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
