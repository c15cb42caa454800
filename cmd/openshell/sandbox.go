package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/api/sandboxv1"
	"github.com/openshell/openshell/gateway/validation"
	"github.com/openshell/openshell/internal/cli/sshcmds"
	"github.com/openshell/openshell/supervisor/policy"
)

func (a *app) sandboxCmd() *cobra.Command {
	var workspace string
	cmd := &cobra.Command{Use: "sandbox", Aliases: []string{"sandboxes", "sb"}, Short: "Create, inspect and delete sandboxes"}
	cmd.PersistentFlags().StringVar(&workspace, "workspace", "", "workspace (default: the gateway's default workspace)")
	cmd.AddCommand(a.sandboxCreate(&workspace), a.sandboxGet(&workspace), a.sandboxList(&workspace),
		a.sandboxDelete(&workspace), a.sandboxStop(&workspace), a.sandboxStart(&workspace), a.sandboxWatch(&workspace))
	for _, c := range cmd.Commands() {
		switch c.Name() {
		case "get", "stop", "start", "watch":
			c.ValidArgsFunction = a.completeSandboxes(false)
		case "delete":
			c.ValidArgsFunction = a.completeSandboxes(true)
		}
	}
	return cmd
}

// createOptions are the flags of `sandbox create`.
type createOptions struct {
	name, image, cpu, memory, policy string
	env, labels, providers           []string
	gpu                              string   // --gpu: "" = none, a count, or bare
	gpuDevices                       []string // --gpu-device
	diskSize                         string   // --disk-size: the vm driver's writable disk
	timeout                          time.Duration
	noWait                           bool
	// detach/noTTY: do not attach a shell after READY even on a terminal.
	detach, noTTY bool
	uploads       []string // PATH[:DEST], copied in once READY
	forwards      []string // PORT or LOCAL:REMOTE, started once READY
	fromSnapshot  string   // --from-snapshot: start from a snapshot of a VM sandbox
}

// buildCreateRequest turns flags and the command after `--` into a request, checking
// what can be checked locally with the gateway's own rules.
func buildCreateRequest(o createOptions, workspace string, argv []string) (*openshellv1.CreateSandboxRequest, error) {
	if o.name != "" {
		if err := validation.Name("--name", o.name); err != nil {
			return nil, err
		}
	}
	spec := &openshellv1.SandboxSpec{Template: &openshellv1.SandboxTemplate{Image: o.image}, Command: argv}
	if len(o.env) > 0 {
		spec.Environment = map[string]string{}
		for _, kv := range o.env {
			k, v, err := validation.ParseKeyValue("--env", kv)
			if err != nil {
				return nil, err
			}
			if err := validation.EnvKey("--env", k); err != nil {
				return nil, err
			}
			spec.Environment[k] = v
		}
	}
	var labels map[string]string
	if len(o.labels) > 0 {
		labels = map[string]string{}
		for _, kv := range o.labels {
			k, v, err := validation.ParseKeyValue("--label", kv)
			if err != nil {
				return nil, err
			}
			labels[k] = v
		}
		if err := validation.Labels("--label", labels); err != nil {
			return nil, err
		}
	}
	for _, q := range []struct{ flag, v string }{{"--cpu", o.cpu}, {"--memory", o.memory}, {"--disk-size", o.diskSize}} {
		if !utf8.ValidString(q.v) || strings.ContainsAny(q.v, " \t\r\n") {
			return nil, fmt.Errorf("%s %q is not a quantity; write e.g. 2, 500m, 4Gi", q.flag, q.v)
		}
	}
	if o.cpu != "" || o.memory != "" {
		q := map[string]any{}
		if o.cpu != "" {
			q["cpu"] = o.cpu
		}
		if o.memory != "" {
			q["memory"] = o.memory
		}
		res, err := structpb.NewStruct(map[string]any{"requests": q, "limits": q})
		if err != nil {
			return nil, err
		}
		spec.Template.Resources = res
	}
	if err := applyGPU(spec, o.gpu, o.gpuDevices); err != nil {
		return nil, err
	}
	if err := applyDiskSize(spec, o.diskSize, o.fromSnapshot); err != nil {
		return nil, err
	}
	if o.policy != "" {
		p, err := loadPolicy(o.policy)
		if err != nil {
			return nil, err
		}
		spec.Policy = p
	}
	spec.Providers = o.providers
	req := &openshellv1.CreateSandboxRequest{Name: o.name, Workspace: workspace, Labels: labels, Spec: spec, FromSnapshot: o.fromSnapshot}
	if err := validation.CreateRequest(req); err != nil {
		return nil, err
	}
	return req, nil
}

// loadPolicy reads a sandbox policy file in the YAML format `openshell policy
// validate` checks (version, filesystem_policy, landlock, process, network_policies);
// errors name the field and line.
func loadPolicy(path string) (*sandboxv1.SandboxPolicy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--policy: %w", err)
	}
	p, err := policy.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("--policy %s: %w", path, err)
	}
	return p.ToProto(), nil
}

func (a *app) sandboxCreate(ws *string) *cobra.Command {
	var o createOptions
	cmd := &cobra.Command{
		Use:   "create [flags] [-- COMMAND ARGS...]",
		Short: "Create a sandbox, wait until it is ready and, on a terminal, open a shell in it",
		Example: `  openshell sandbox create --name dev --from ubuntu:24.04
  openshell sandbox create --name job --env MODE=batch -- python3 run.py
  openshell sandbox create --name app --from ./app      # builds ./app/Dockerfile locally
  openshell sandbox create --name ci --detach --upload ./src:/sandbox/src`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			ctx := cmd.Context()
			type upload struct{ src, dst string }
			var uploads []upload
			for _, u := range o.uploads {
				src, dst, err := sshcmds.ParseUpload(u)
				if err != nil {
					return err
				}
				uploads = append(uploads, upload{src, dst})
			}
			var forwards []sshcmds.ForwardSpec
			for _, f := range o.forwards {
				spec, err := sshcmds.ParseForward(f)
				if err != nil {
					return fmt.Errorf("--forward: %w", err)
				}
				forwards = append(forwards, spec)
			}
			if o.noWait && (len(uploads) > 0 || len(forwards) > 0) {
				return errors.New("--upload and --forward need the sandbox READY: drop --no-wait")
			}
			image, err := a.resolveImage(ctx, o.image, o.name, "--from", os.Stderr)
			if err != nil {
				return err
			}
			o.image = image
			if o.diskSize != "" {
				if err := a.requireDriver(ctx, "--disk-size", vmDriverName); err != nil {
					return err
				}
			}
			args = takeGPUCount(cmd, &o.gpu, args)
			req, err := buildCreateRequest(o, *ws, args)
			if err != nil {
				return err
			}
			c, done, err := a.client(ctx)
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.CreateSandbox(ctx, req)
			if err != nil {
				return fmt.Errorf("create sandbox: %w", err)
			}
			sb := resp.GetSandbox()
			name := sb.GetMetadata().GetName()
			fmt.Fprintf(os.Stderr, "sandbox %s created (id %s)\n", name, sb.GetMetadata().GetId())
			if !o.noWait {
				if sb, err = waitReady(ctx, c, sb, o.timeout, os.Stderr); err != nil {
					return err
				}
			}
			for _, u := range uploads {
				if err := sshcmds.UploadTo(ctx, a.dial, name, u.src, u.dst, os.Stderr); err != nil {
					return fmt.Errorf("sandbox %s is ready, but --upload %s failed: %w", name, u.src, err)
				}
			}
			for _, f := range forwards {
				r, err := a.startForward(ctx, name, f, 15*time.Second)
				if err != nil {
					return fmt.Errorf("sandbox %s is ready, but --forward %s failed: %w", name, f, err)
				}
				fmt.Fprintf(os.Stderr, "forwarding 127.0.0.1:%d → sandbox %s port %d (stop with `openshell forward stop %s`)\n", r.Local, name, r.Remote, name)
			}
			attach := !o.noWait && !o.detach && !o.noTTY && a.output == "table" &&
				isTerminal(cmd.InOrStdin()) && isTerminal(cmd.OutOrStdout())
			if !attach {
				return a.printSandbox(cmd.OutOrStdout(), sb)
			}
			fmt.Fprintf(os.Stderr, "sandbox %s is ready; opening a shell (exit leaves it running; --detach to skip this)\n", name)
			code, err := sshcmds.Shell(ctx, a.dial, name, cmd.InOrStdin(), cmd.OutOrStdout())
			if err != nil {
				return fmt.Errorf("sandbox %s is ready, but the shell failed: %w; try `openshell sandbox connect %s`", name, err, name)
			}
			if code != 0 {
				return &sshcmds.ExitCodeError{Code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "sandbox name (a DNS label; default: generated)")
	f.StringVar(&o.image, "from", "", "image reference, or a local directory/Dockerfile to build, an OCI layout directory or an image .tar (default: the driver's default image)")
	f.StringVar(&o.cpu, "cpu", "", "CPU limit, e.g. 2 or 500m")
	f.StringVar(&o.memory, "memory", "", "memory limit, e.g. 4Gi")
	f.StringArrayVar(&o.env, "env", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringArrayVar(&o.labels, "label", nil, "label KEY=VALUE (repeatable)")
	f.StringVar(&o.policy, "policy", "", "sandbox policy file (YAML or JSON)")
	f.StringArrayVar(&o.providers, "provider", nil, "attach a provider's credentials (see `openshell provider create`; repeatable)")
	_ = cmd.RegisterFlagCompletionFunc("provider", a.completeProviders)
	addGPUFlags(cmd, &o.gpu, &o.gpuDevices)
	f.StringVar(&o.diskSize, "disk-size", "", "writable disk of a VM sandbox, e.g. 20Gi (vm driver only; default: the driver's)")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long to wait for the sandbox to become ready")
	f.BoolVar(&o.noWait, "no-wait", false, "return right after the gateway accepted the sandbox")
	f.BoolVarP(&o.detach, "detach", "d", false, "do not open a shell in the sandbox once it is ready (on a terminal, create opens one by default)")
	f.BoolVar(&o.noTTY, "no-tty", false, "same as --detach: never attach the terminal")
	f.StringArrayVar(&o.forwards, "forward", nil, "forward a local `PORT` (or LOCAL:REMOTE) to the sandbox once ready (repeatable; see openshell forward)")
	f.StringArrayVar(&o.uploads, "upload", nil, "copy a local file or directory into the sandbox once ready: `PATH[:DEST]` (repeatable)")
	f.StringVar(&o.fromSnapshot, "from-snapshot", "", "start from a snapshot of a VM sandbox (openshell sandbox snapshot; its image, CPUs and memory) with this sandbox's own identity")
	return cmd
}

// waitReady follows the sandbox until READY (returned), ERROR or the timeout,
// printing one line per phase change to progress.
func waitReady(ctx context.Context, c openshellv1.OpenShellClient, sb *openshellv1.Sandbox, timeout time.Duration, progress io.Writer) (*openshellv1.Sandbox, error) {
	name := sb.GetMetadata().GetName()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stream, err := c.WatchSandbox(wctx, &openshellv1.WatchSandboxRequest{Id: sb.GetMetadata().GetId(), FollowStatus: true, StopOnTerminal: true})
	if err != nil {
		return nil, err
	}
	last := ""
	cur := sb
	for {
		ev, err := stream.Recv()
		// The gateway ends the stream at the deadline this side sent it, which the
		// wire rounds down to the millisecond: an end within a second of the deadline,
		// clean or not, is the timeout too, unless the sandbox got where it was going.
		dl, _ := wctx.Deadline()
		phase := cur.GetStatus().GetPhase()
		settled := phase == openshellv1.SandboxPhase_SANDBOX_PHASE_READY || phase == openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR
		timedOut := err != nil && !settled && ctx.Err() == nil && (wctx.Err() != nil || time.Until(dl) < time.Second)
		if errors.Is(err, io.EOF) && !timedOut {
			break
		}
		if err != nil {
			if timedOut {
				return nil, &exitError{code: 3, err: fmt.Errorf("sandbox %s is not ready after %s (phase %s%s); it keeps provisioning — follow it with `openshell sandbox watch %s` or raise --timeout",
					name, timeout, phaseString(cur.GetStatus().GetPhase()), parenthesize(readyDetail(cur)), name)}
			}
			return nil, fmt.Errorf("waiting for sandbox %s: %w", name, err)
		}
		if ev.GetSandbox() == nil {
			continue
		}
		cur = ev.GetSandbox()
		line := phaseString(cur.GetStatus().GetPhase()) + parenthesize(readyDetail(cur))
		if line != last {
			fmt.Fprintf(progress, "%s: %s\n", name, line)
			last = line
		}
	}
	switch cur.GetStatus().GetPhase() {
	case openshellv1.SandboxPhase_SANDBOX_PHASE_READY:
		return cur, nil
	case openshellv1.SandboxPhase_SANDBOX_PHASE_ERROR:
		return nil, fmt.Errorf("sandbox %s failed: %s; inspect it with `openshell sandbox get %s` and delete it with `openshell sandbox delete %s`",
			name, readyDetail(cur), name, name)
	}
	return nil, fmt.Errorf("sandbox %s stopped being watched in phase %s; check `openshell sandbox get %s`", name, phaseString(cur.GetStatus().GetPhase()), name)
}

func parenthesize(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

func (a *app) printSandbox(w io.Writer, sb *openshellv1.Sandbox) error {
	if a.output == "table" {
		return printSandboxDetail(w, sb)
	}
	return printStructured(w, a.output, sb)
}

func (a *app) sandboxGet(ws *string) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show one sandbox",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			c, done, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.GetSandbox(cmd.Context(), &openshellv1.GetSandboxRequest{Name: args[0], Workspace: *ws})
			if err != nil {
				return err
			}
			return a.printSandbox(cmd.OutOrStdout(), resp.GetSandbox())
		},
	}
}

func (a *app) sandboxList(ws *string) *cobra.Command {
	var selector string
	var all bool
	var limit uint32
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List sandboxes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			c, done, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.ListSandboxes(cmd.Context(), &openshellv1.ListSandboxesRequest{Workspace: *ws, AllWorkspaces: all, LabelSelector: selector, Limit: limit})
			if err != nil {
				return err
			}
			if a.output == "table" {
				return printSandboxTable(cmd.OutOrStdout(), resp.GetSandboxes(), all)
			}
			return printStructured(cmd.OutOrStdout(), a.output, resp.GetSandboxes())
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "label selector k1=v1,k2=v2")
	cmd.Flags().BoolVarP(&all, "all-workspaces", "A", false, "list every workspace")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "maximum number of sandboxes (0 = gateway default, 100)")
	return cmd
}

func (a *app) sandboxDelete(ws *string) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "delete NAME... | --all",
		Short: "Delete sandboxes",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return fmt.Errorf("give sandbox names or --all (not both)")
			}
			ctx := cmd.Context()
			c, done, err := a.client(ctx)
			if err != nil {
				return err
			}
			defer done()
			names := args
			if all {
				resp, err := c.ListSandboxes(ctx, &openshellv1.ListSandboxesRequest{Workspace: *ws, Limit: 10000})
				if err != nil {
					return err
				}
				for _, sb := range resp.GetSandboxes() {
					names = append(names, sb.GetMetadata().GetName())
				}
			}
			var errs []error
			for _, n := range names {
				if _, err := c.DeleteSandbox(ctx, &openshellv1.DeleteSandboxRequest{Name: n, Workspace: *ws}); err != nil {
					errs = append(errs, fmt.Errorf("delete %s: %w", n, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "sandbox %s deleted\n", n)
			}
			if len(errs) == 1 {
				return errs[0]
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "delete every sandbox in the workspace")
	return cmd
}

func (a *app) sandboxStop(ws *string) *cobra.Command {
	var suspend bool
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a sandbox (keeps its state); --suspend keeps its memory too",
		Long: `Stop a sandbox. Its disk is kept; start boots it again.

With --suspend (VM sandboxes on a backend that can save VMs), the running VM's
memory and devices are saved to disk and nothing of it keeps running (no CPU, no
RAM); start then resumes it where it was, its processes still running.`,
		Example: `  openshell sandbox stop my-box
  openshell sandbox stop --suspend my-box && openshell sandbox start my-box`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			c, done, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			if suspend && a.output == "table" {
				fmt.Fprintf(os.Stderr, "suspending sandbox %s (saving its memory)...\n", args[0])
			}
			resp, err := c.StopSandbox(cmd.Context(), &openshellv1.StopSandboxRequest{Name: args[0], Workspace: *ws, Suspend: suspend})
			if err != nil {
				return err
			}
			if a.output != "table" {
				return printStructured(cmd.OutOrStdout(), a.output, resp.GetSandbox())
			}
			what := phaseString(resp.GetSandbox().GetStatus().GetPhase())
			if suspend {
				what += " (suspended: start resumes it)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sandbox %s: %s\n", args[0], what)
			return nil
		},
	}
	cmd.Flags().BoolVar(&suspend, "suspend", false, "save the VM's memory to disk and stop it with nothing running; start resumes it where it was")
	return cmd
}

func (a *app) sandboxStart(ws *string) *cobra.Command {
	var timeout time.Duration
	var noWait bool
	cmd := &cobra.Command{
		Use:   "start NAME",
		Short: "Start a stopped sandbox and wait until it is ready",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, done, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.StartSandbox(cmd.Context(), &openshellv1.StartSandboxRequest{Name: args[0], Workspace: *ws})
			if err != nil {
				return err
			}
			sb := resp.GetSandbox()
			if !noWait {
				if sb, err = waitReady(cmd.Context(), c, sb, timeout, os.Stderr); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "sandbox %s: %s\n", args[0], phaseString(sb.GetStatus().GetPhase()))
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the sandbox to become ready")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "do not wait for READY")
	return cmd
}

func (a *app) sandboxWatch(ws *string) *cobra.Command {
	var logs bool
	cmd := &cobra.Command{
		Use:   "watch NAME",
		Short: "Follow a sandbox's phase changes (and logs with --logs) until interrupted",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(a.output); err != nil {
				return err
			}
			ctx := cmd.Context()
			c, done, err := a.client(ctx)
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.GetSandbox(ctx, &openshellv1.GetSandboxRequest{Name: args[0], Workspace: *ws})
			if err != nil {
				return err
			}
			stream, err := c.WatchSandbox(ctx, &openshellv1.WatchSandboxRequest{Id: resp.GetSandbox().GetMetadata().GetId(), FollowStatus: true, FollowLogs: logs, FollowEvents: true})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for {
				ev, err := stream.Recv()
				if errors.Is(err, io.EOF) || ctx.Err() != nil {
					return nil
				}
				if err != nil {
					return err
				}
				if a.output != "table" {
					if err := printStructured(out, a.output, ev); err != nil {
						return err
					}
					continue
				}
				now := time.Now().Format("15:04:05")
				switch p := ev.GetPayload().(type) {
				case *openshellv1.SandboxStreamEvent_Sandbox:
					fmt.Fprintf(out, "%s %s %s%s\n", now, args[0], phaseString(p.Sandbox.GetStatus().GetPhase()), parenthesize(readyDetail(p.Sandbox)))
				case *openshellv1.SandboxStreamEvent_Log:
					fmt.Fprintf(out, "%s [%s] %s %s\n", now, p.Log.GetSource(), p.Log.GetLevel(), p.Log.GetMessage())
				case *openshellv1.SandboxStreamEvent_Event:
					fmt.Fprintf(out, "%s event %s %s: %s\n", now, p.Event.GetType(), p.Event.GetReason(), p.Event.GetMessage())
				case *openshellv1.SandboxStreamEvent_Warning:
					fmt.Fprintf(out, "%s warning: %s\n", now, p.Warning.GetMessage())
				}
			}
		},
	}
	cmd.Flags().BoolVar(&logs, "logs", false, "also follow the sandbox's logs")
	return cmd
}

// isTerminal reports whether r/w is a terminal (the CLI's own stdin/stdout).
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	return ok && term.IsTerminal(int(file.Fd()))
}
