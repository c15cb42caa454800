// Command standin is a supervisor stand-in for the Docker driver's tests, used while
// (or where) the real openshell-sandbox cannot be built. Like the supervisor it is the
// container's entrypoint and reads the bootstrap hand-off from the environment; it
// checks the hand-off, reports it on stdout (the tests read it back from the container
// log), runs the main process, forwards SIGTERM/SIGINT to it and exits with its code.
// It never contacts a gateway.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/openshell/openshell/supervisor/bootstrap"
)

func main() {
	cfg, err := bootstrap.FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(70)
	}
	token, err := cfg.LoadToken()
	if err != nil || token == "" {
		fmt.Fprintln(os.Stderr, "standin: no token:", err)
		os.Exit(71)
	}
	fmt.Printf("standin: sandbox=%s name=%s endpoint=%s uid=%d image_user=%q image_workdir=%q token_len=%d ca=%q\n",
		cfg.SandboxID, cfg.SandboxName, cfg.Endpoint, os.Getuid(), cfg.ImageUser, cfg.ImageWorkdir, len(token), cfg.CAFile)
	if len(cfg.Main.Command) == 0 {
		cfg.Main.Command = []string{"sleep", "2147483647"}
	}
	cmd := exec.Command(cfg.Main.Command[0], cfg.Main.Command[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	for k, v := range cfg.Main.Env {
		cmd.Env = append(cmd.Environ(), k+"="+v)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "standin: start main process:", err)
		os.Exit(72)
	}
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			os.Exit(128 + int(ws.Signal()))
		}
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		os.Exit(73)
	}
}
