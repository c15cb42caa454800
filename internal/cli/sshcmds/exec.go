package sshcmds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// ParseEnv parses K=V assignments.
func ParseEnv(kvs []string) (map[string]string, error) {
	env := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--env %q: use KEY=VALUE", kv)
		}
		env[k] = v
	}
	return env, nil
}

// nameAndCommand splits `[NAME] -- CMD…` (or --name NAME -- CMD…).
func nameAndCommand(cmd *cobra.Command, name string, args []string) (string, []string, error) {
	dash := cmd.ArgsLenAtDash()
	before, after := args, []string(nil)
	if dash >= 0 {
		before, after = args[:dash], args[dash:]
	}
	if name == "" && len(before) > 0 {
		name, before = before[0], before[1:]
	}
	after = append(before, after...)
	if name == "" {
		return "", nil, errors.New("no sandbox name: use `exec -n NAME -- CMD…`")
	}
	if len(after) == 0 {
		return "", nil, errors.New("no command: use `exec -n NAME -- CMD…`")
	}
	return name, after, nil
}

func execCmd(dial DialFunc) *cobra.Command {
	var (
		name, workdir string
		envs          []string
		tty, stdin    bool
		timeout       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec -n NAME [--tty] [--workdir DIR] [--env K=V] [--timeout D] -- CMD [ARG…]",
		Short: "Run a command in a sandbox; exits with its exit code",
		RunE: func(cmd *cobra.Command, args []string) error {
			name, argv, err := nameAndCommand(cmd, name, args)
			if err != nil {
				return err
			}
			env, err := ParseEnv(envs)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			api, closeFn, err := connect(ctx, dial)
			if err != nil {
				return err
			}
			defer closeFn()
			id, err := resolve(ctx, api, name)
			if err != nil {
				return err
			}
			req := &pb.ExecSandboxRequest{SandboxId: id, Command: argv, Workdir: workdir, Environment: env,
				TimeoutSeconds: uint32((timeout + time.Second - 1) / time.Second), Tty: tty}
			var code int
			if tty {
				code, err = runInteractive(ctx, api, req, cmd.InOrStdin(), cmd.OutOrStdout())
			} else {
				if stdin {
					if req.Stdin, err = io.ReadAll(cmd.InOrStdin()); err != nil {
						return fmt.Errorf("read stdin: %w", err)
					}
				}
				code, err = runExec(ctx, api, req, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return &ExitCodeError{Code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&name, "name", "n", "", "sandbox name")
	f.BoolVarP(&tty, "tty", "t", false, "allocate a terminal and stream stdin interactively")
	f.BoolVarP(&stdin, "stdin", "i", false, "send this command's stdin (read to the end) to the command")
	f.StringVarP(&workdir, "workdir", "w", "", "working directory inside the sandbox")
	f.StringArrayVarP(&envs, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.DurationVar(&timeout, "timeout", 0, "kill the command after this long (exit code 124); 0 = none")
	return cmd
}

func runExec(ctx context.Context, api pb.OpenShellClient, req *pb.ExecSandboxRequest, stdout, stderr io.Writer) (int, error) {
	stream, err := api.ExecSandbox(ctx, req)
	if err != nil {
		return 0, fmt.Errorf("exec in sandbox: %w", err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, errors.New("exec in sandbox: the stream ended without an exit status")
			}
			return 0, fmt.Errorf("exec in sandbox: %w", err)
		}
		switch p := ev.GetPayload().(type) {
		case *pb.ExecSandboxEvent_Stdout:
			_, _ = stdout.Write(p.Stdout.GetData())
		case *pb.ExecSandboxEvent_Stderr:
			_, _ = stderr.Write(p.Stderr.GetData())
		case *pb.ExecSandboxEvent_Exit:
			return int(p.Exit.GetExitCode()), nil
		}
	}
}

// runInteractive drives ExecSandboxInteractive: raw local terminal when stdin is one,
// window size changes forwarded, stdin streamed, output to out.
func runInteractive(ctx context.Context, api pb.OpenShellClient, req *pb.ExecSandboxRequest, in io.Reader, out io.Writer) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var fd = -1
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd = int(f.Fd())
		if w, h, err := term.GetSize(fd); err == nil {
			req.Cols, req.Rows = uint32(w), uint32(h)
		}
		old, err := term.MakeRaw(fd)
		if err == nil {
			defer term.Restore(fd, old)
		}
	}
	stream, err := api.ExecSandboxInteractive(ctx)
	if err != nil {
		return 0, fmt.Errorf("exec in sandbox: %w", err)
	}
	if err := stream.Send(&pb.ExecSandboxInput{Payload: &pb.ExecSandboxInput_Start{Start: req}}); err != nil {
		_, rerr := stream.Recv()
		return 0, fmt.Errorf("exec in sandbox: %w", errors.Join(err, rerr))
	}
	sendCh := make(chan *pb.ExecSandboxInput, 16)
	go func() { // the only sender after start
		for m := range sendCh {
			if m == nil {
				_ = stream.CloseSend()
				return
			}
			if err := stream.Send(m); err != nil {
				return
			}
		}
	}()
	if fd >= 0 {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-winch:
					if w, h, err := term.GetSize(fd); err == nil {
						select {
						case sendCh <- &pb.ExecSandboxInput{Payload: &pb.ExecSandboxInput_Resize{Resize: &pb.ExecSandboxWindowResize{Cols: uint32(w), Rows: uint32(h)}}}:
						case <-ctx.Done():
						}
					}
				}
			}
		}()
	}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				select {
				case sendCh <- &pb.ExecSandboxInput{Payload: &pb.ExecSandboxInput_Stdin{Stdin: append([]byte(nil), buf[:n]...)}}:
				case <-ctx.Done():
					return
				}
			}
			if err != nil {
				select {
				case sendCh <- nil: // half-close: the command sees EOF
				case <-ctx.Done():
				}
				return
			}
		}
	}()
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, errors.New("exec in sandbox: the stream ended without an exit status")
			}
			return 0, fmt.Errorf("exec in sandbox: %w", err)
		}
		switch p := ev.GetPayload().(type) {
		case *pb.ExecSandboxEvent_Stdout:
			_, _ = out.Write(p.Stdout.GetData())
		case *pb.ExecSandboxEvent_Stderr:
			_, _ = out.Write(p.Stderr.GetData())
		case *pb.ExecSandboxEvent_Exit:
			return int(p.Exit.GetExitCode()), nil
		}
	}
}
