package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/clientconf"
	"github.com/openshell/openshell/internal/cli/sshcmds"
)

// A forward runs as a background `openshell forward start --foreground` process per
// local port; it records itself in the gateway's client directory
// (forwards/<local port>.json) so that `forward list` and `forward stop` find it, and
// removes the record when it ends.
// forwardCheckEvery is how often a forward checks that its sandbox still exists.
var forwardCheckEvery = 5 * time.Second

type forwardRecord struct {
	Sandbox string    `json:"sandbox"`
	Local   uint16    `json:"local_port"`
	Remote  uint16    `json:"sandbox_port"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Log     string    `json:"log,omitempty"`
}

func forwardsDir(gateway string) (string, error) {
	dir, err := clientconf.Dir(gateway)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "forwards"), nil
}

func recordPath(dir string, local uint16) string {
	return filepath.Join(dir, strconv.Itoa(int(local))+".json")
}

// alive reports whether the record's process still runs and is an openshell forward
// (a recycled PID is not ours).
func (r forwardRecord) alive() bool {
	if r.PID <= 0 || syscall.Kill(r.PID, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.PID))
	return err != nil || strings.Contains(string(b), "forward\x00start")
}

// loadForwards returns the live forwards, removing records of ended ones.
func loadForwards(gateway string) ([]forwardRecord, error) {
	dir, err := forwardsDir(gateway)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []forwardRecord
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var r forwardRecord
		if json.Unmarshal(b, &r) != nil || !r.alive() {
			_ = os.Remove(p)
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func (a *app) forwardCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "forward",
		Short: "Forward local ports to ports inside sandboxes, through the gateway",
		Long: `A forward listens on this machine's loopback and carries each connection to a port
on the sandbox's loopback through the gateway; the sandbox opens no port of its own.
Forwards run in the background until stopped (or until the sandbox goes away).`,
	}
	cmd.AddCommand(a.forwardStart(), a.forwardStop(), a.forwardList())
	return cmd
}

func (a *app) forwardStart() *cobra.Command {
	var foreground bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "start NAME PORT|LOCAL:REMOTE",
		Short: "Start forwarding a local port to a port in sandbox NAME (in the background)",
		Example: `  openshell forward start dev 8080          # localhost:8080 → dev's 127.0.0.1:8080
  openshell forward start dev 9000:8080     # localhost:9000 → dev's 127.0.0.1:8080`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: a.completeSandboxes(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := sshcmds.ParseForward(args[1])
			if err != nil {
				return err
			}
			if foreground {
				return a.runForward(cmd.Context(), args[0], spec, os.Stderr)
			}
			r, err := a.startForward(cmd.Context(), args[0], spec, wait)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "forwarding 127.0.0.1:%d → sandbox %s port %d (pid %d; stop with `openshell forward stop %s %d`)\n",
				r.Local, r.Sandbox, r.Remote, r.PID, r.Sandbox, r.Local)
			return nil
		},
	}
	cmd.Flags().BoolVar(&foreground, "foreground", false, "run in the foreground until interrupted")
	cmd.Flags().DurationVar(&wait, "wait", 15*time.Second, "how long to wait for the background forward to listen")
	return cmd
}

// startForward runs `forward start --foreground` in the background (its own session,
// so it outlives this terminal) and waits until it recorded itself as listening.
func (a *app) startForward(ctx context.Context, sandbox string, spec sshcmds.ForwardSpec, wait time.Duration) (forwardRecord, error) {
	dir, err := forwardsDir(a.gateway)
	if err != nil {
		return forwardRecord{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return forwardRecord{}, err
	}
	live, err := loadForwards(a.gateway)
	if err != nil {
		return forwardRecord{}, err
	}
	for _, r := range live {
		if r.Local == spec.Local {
			return forwardRecord{}, fmt.Errorf("local port %d is already forwarded to sandbox %s port %d (pid %d); stop it with `openshell forward stop %s %d`",
				r.Local, r.Sandbox, r.Remote, r.PID, r.Sandbox, r.Local)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return forwardRecord{}, err
	}
	logPath := filepath.Join(dir, strconv.Itoa(int(spec.Local))+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return forwardRecord{}, err
	}
	defer logf.Close()
	c := exec.Command(self, "--gateway", a.gateway, "forward", "start", "--foreground", sandbox, spec.String())
	c.Stdout, c.Stderr = logf, logf
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		return forwardRecord{}, fmt.Errorf("start the forward: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		if b, err := os.ReadFile(recordPath(dir, spec.Local)); err == nil {
			var r forwardRecord
			if json.Unmarshal(b, &r) == nil && r.PID == c.Process.Pid {
				return r, nil
			}
		}
		select {
		case err := <-exited:
			return forwardRecord{}, fmt.Errorf("forward to sandbox %s ended at start (%v)%s", sandbox, err, tail(logPath))
		case <-deadline.C:
			_ = c.Process.Kill()
			return forwardRecord{}, fmt.Errorf("forward to sandbox %s did not start listening within %s; see %s", sandbox, wait, logPath)
		case <-ctx.Done():
			_ = c.Process.Kill()
			return forwardRecord{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runForward listens, records itself, and serves until interrupted.
func (a *app) runForward(ctx context.Context, sandbox string, spec sshcmds.ForwardSpec, logw io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	dir, err := forwardsDir(a.gateway)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(spec.Local))))
	if err != nil {
		return fmt.Errorf("forward: listen on local port %d: %w; pick another local port (LOCAL:REMOTE)", spec.Local, err)
	}
	defer ln.Close()
	// Check the sandbox before recording: a wrong name fails the start.
	c, done, err := a.client(ctx)
	if err != nil {
		return err
	}
	_, err = c.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: sandbox})
	done()
	if err != nil {
		return fmt.Errorf("forward to sandbox %s: %w", sandbox, err)
	}
	rec := forwardRecord{Sandbox: sandbox, Local: spec.Local, Remote: spec.Remote, PID: os.Getpid(), Started: time.Now().UTC().Truncate(time.Second),
		Log: filepath.Join(dir, strconv.Itoa(int(spec.Local))+".log")}
	b, _ := json.MarshalIndent(rec, "", "  ")
	path := recordPath(dir, spec.Local)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	defer os.Remove(path)
	logger := log.New(logw, "", log.LstdFlags)
	logger.Printf("forwarding 127.0.0.1:%d to sandbox %s port %d", spec.Local, sandbox, spec.Remote)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// A forward to a deleted sandbox serves nothing: end with it.
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(forwardCheckEvery):
			}
			c, done, err := a.client(ctx)
			if err != nil {
				continue
			}
			_, err = c.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: sandbox})
			done()
			if status.Code(err) == codes.NotFound {
				logger.Printf("sandbox %s is gone; stopping the forward", sandbox)
				cancel()
				return
			}
		}
	}()
	err = sshcmds.ServeForward(ctx, a.dial, sandbox, ln, spec.Remote, logger.Printf)
	logger.Printf("forward ended: %v", err)
	return err
}

func (a *app) forwardStop() *cobra.Command {
	return &cobra.Command{
		Use:               "stop NAME [LOCAL-PORT]",
		Short:             "Stop the forwards to sandbox NAME (all, or the one on LOCAL-PORT)",
		Args:              cobra.RangeArgs(1, 2),
		ValidArgsFunction: a.completeSandboxes(false),
		RunE: func(cmd *cobra.Command, args []string) error {
			var port uint64
			if len(args) == 2 {
				var err error
				if port, err = strconv.ParseUint(args[1], 10, 16); err != nil || port == 0 {
					return fmt.Errorf("LOCAL-PORT %q is not a port (1-65535)", args[1])
				}
			}
			live, err := loadForwards(a.gateway)
			if err != nil {
				return err
			}
			n := 0
			for _, r := range live {
				if r.Sandbox != args[0] || (port != 0 && uint64(r.Local) != port) {
					continue
				}
				if err := syscall.Kill(r.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
					return fmt.Errorf("stop forward on port %d (pid %d): %w", r.Local, r.PID, err)
				}
				for i := 0; i < 50 && r.alive(); i++ {
					time.Sleep(100 * time.Millisecond)
				}
				if dir, err := forwardsDir(a.gateway); err == nil {
					_ = os.Remove(recordPath(dir, r.Local))
				}
				fmt.Fprintf(cmd.OutOrStdout(), "stopped forward 127.0.0.1:%d → sandbox %s port %d\n", r.Local, r.Sandbox, r.Remote)
				n++
			}
			if n == 0 {
				return fmt.Errorf("no forward to sandbox %s%s is running; see `openshell forward list`", args[0], map[bool]string{true: fmt.Sprintf(" on local port %d", port)}[port != 0])
			}
			return nil
		},
	}
}

func (a *app) forwardList() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the running forwards",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			live, err := loadForwards(a.gateway)
			if err != nil {
				return err
			}
			if live == nil {
				live = []forwardRecord{}
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, live)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SANDBOX\tLOCAL\tSANDBOX PORT\tPID\tSTARTED")
			for _, r := range live {
				fmt.Fprintf(tw, "%s\t127.0.0.1:%d\t%d\t%d\t%s\n", r.Sandbox, r.Local, r.Remote, r.PID, r.Started.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
}
