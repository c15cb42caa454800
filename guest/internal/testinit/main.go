//go:build linux

// Command testinit is a guest /init for the VM tests and benchmarks. It is built
// static (CGO_ENABLED=0) and packed into an initramfs. The kernel passes unknown
// key=value command-line parameters to init as environment variables:
//
//	openshell_test=bare   write a line to the console and power off at once
//	openshell_test=answer (default) run guest.RunPID1, then dial the host on
//	                      PortBootstrap and report what it sees as one JSON line;
//	                      serve an echo on port 1030; power off when the host says "bye".
//	openshell_token=T     written to /persist.txt on the overlay root for the next boot.
//	openshell_share=TAG   mount virtiofs TAG and report /mnt/share/hello.txt.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/openshell/openshell/guest"
	"github.com/openshell/openshell/guest/channel"
)

// EchoPort is where the guest serves an echo for host→guest dial tests.
const EchoPort uint32 = 1030

// Answer is what the guest reports to the host.
type Answer struct {
	Image     string `json:"image"`
	Prev      string `json:"prev"`
	Transport string `json:"transport"`
	PID       int    `json:"pid"`
	Root      string `json:"root"`
	Share     string `json:"share,omitempty"`
	// RandomReady: the kernel's random pool was initialised by the time the program
	// ran (a non-blocking getrandom succeeds), as it is when the CPU offers a seed.
	RandomReady bool `json:"random_ready"`
}

func main() {
	if os.Getenv("openshell_test") == "bare" {
		fmt.Fprintln(os.Stdout, "openshell testinit: bare init, powering off")
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		select {}
	}
	if !guest.IsPID1() {
		fmt.Fprintln(os.Stderr, "testinit must run as PID 1 inside a VM")
		os.Exit(2)
	}
	guest.RunPID1(guest.InitOptions{}, run)
}

func run() int {
	a := Answer{PID: os.Getpid(), Prev: "none"}
	if _, err := unix.Getrandom(make([]byte, 16), unix.GRND_NONBLOCK); err == nil {
		a.RandomReady = true
	}
	if b, err := os.ReadFile("/etc/openshell-test-image"); err == nil {
		a.Image = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/persist.txt"); err == nil {
		a.Prev = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/mounts"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 2 && f[1] == "/" {
				a.Root = f[2]
			}
		}
	}
	if tok := os.Getenv("openshell_token"); tok != "" {
		if err := os.WriteFile("/persist.txt", []byte(tok+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "testinit: write /persist.txt:", err)
		}
	}
	a.Transport, _ = channel.Detect()
	if tag := os.Getenv("openshell_share"); tag != "" {
		_ = os.MkdirAll("/mnt/share", 0o755)
		if err := unix.Mount(tag, "/mnt/share", "virtiofs", 0, ""); err != nil {
			a.Share = "mount error: " + err.Error()
		} else if b, err := os.ReadFile("/mnt/share/hello.txt"); err == nil {
			a.Share = strings.TrimSpace(string(b))
		} else {
			a.Share = "read error: " + err.Error()
		}
	}

	if ln, err := channel.Listen(EchoPort); err == nil {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
			}
		}()
	} else {
		fmt.Fprintln(os.Stderr, "testinit: listen:", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := channel.DialHost(ctx, channel.PortBootstrap)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testinit:", err)
		return 1
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(a); err != nil {
		fmt.Fprintln(os.Stderr, "testinit: send answer:", err)
		return 1
	}
	// SIGTERM (the power button, via init) ends the test program like "bye" does.
	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM)
	lines := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(c).ReadString('\n')
		lines <- l
	}()
	var line string
	select {
	case line = <-lines:
	case <-term:
		fmt.Println("testinit: SIGTERM, exiting")
		return 0
	}
	if strings.TrimSpace(line) != "bye" {
		fmt.Fprintf(os.Stderr, "testinit: expected bye, got %q\n", line)
		return 1
	}
	return 0
}
