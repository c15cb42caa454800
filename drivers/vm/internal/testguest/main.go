// Command testguest is a stand-in supervisor for the VM driver's tests: built static
// and put into the initramfs as /init instead of openshell-sandbox. Like the real
// supervisor it fetches its bootstrap config on the bootstrap port and then holds a
// session on the gateway port (bridged by the runner to the gateway address); the
// "session" here is one JSON Report line, after which it waits for the host to say
// "poweroff" (clean guest power-off) or to close (it then reconnects, as a supervisor
// does after a gateway restart). It remembers the previous boot on the overlay root.
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
	c, err := channel.DialHost(ctx, channel.PortBootstrap)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testguest: bootstrap:", err)
		return 1
	}
	var cfg bootstrap.Config
	err = json.NewDecoder(c).Decode(&cfg)
	c.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testguest: bootstrap config:", err)
		return 1
	}
	r := Report{SandboxID: cfg.SandboxID, Endpoint: cfg.Endpoint, HasToken: cfg.Token != "", Command: cfg.Main.Command}
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
		gc, err := channel.DialHost(context.Background(), channel.PortGateway)
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
