package sshcmds

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
)

// FormatLogLine renders one log line for the terminal.
func FormatLogLine(l *pb.SandboxLogLine) string {
	ts := time.UnixMilli(l.GetTimestampMs()).UTC().Format("2006-01-02T15:04:05.000Z")
	src := l.GetSource()
	if src == "" {
		src = "gateway"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-5s %s", ts, l.GetLevel(), src)
	if t := l.GetTarget(); t != "" {
		b.WriteString("/" + t)
	}
	b.WriteString(": " + l.GetMessage())
	if len(l.GetFields()) > 0 {
		keys := make([]string, 0, len(l.GetFields()))
		for k := range l.GetFields() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if k == "stream" {
				continue
			}
			fmt.Fprintf(&b, " %s=%s", k, l.GetFields()[k])
		}
	}
	return b.String()
}

// LogSources are the sources a log line can have: the gateway's own lines about the
// sandbox, and what the sandbox (its supervisor and main process) sent.
var LogSources = []string{"gateway", "sandbox"}

// LogLevels are the --level values, lowest first.
var LogLevels = []string{"trace", "debug", "info", "warn", "error"}

// LogFilter is what --since, --level and --source select, as the gateway takes it.
type LogFilter struct {
	SinceMs  int64
	MinLevel string
	Sources  []string
}

// ParseLogFilter checks the flags: since is a duration back from now ("10m", "1h30m")
// or an RFC 3339 time; level one of LogLevels; sources among LogSources (each value
// may be a comma list).
func ParseLogFilter(since, level string, sources []string, now time.Time) (LogFilter, error) {
	var f LogFilter
	if since != "" {
		if d, err := time.ParseDuration(since); err == nil {
			if d <= 0 {
				return f, fmt.Errorf("--since %q must be positive: e.g. 10m for the last ten minutes", since)
			}
			f.SinceMs = now.Add(-d).UnixMilli()
		} else if t, err := time.Parse(time.RFC3339, since); err == nil {
			f.SinceMs = t.UnixMilli()
		} else {
			return f, fmt.Errorf("--since %q is neither a duration (10m, 2h) nor an RFC 3339 time (2026-01-02T15:04:05Z)", since)
		}
	}
	if level != "" {
		l := strings.ToLower(level)
		if l == "warning" {
			l = "warn"
		}
		if !slices.Contains(LogLevels, l) {
			return f, fmt.Errorf("--level %q: use one of %s", level, strings.Join(LogLevels, ", "))
		}
		f.MinLevel = strings.ToUpper(l)
	}
	for _, v := range sources {
		for _, s := range strings.Split(v, ",") {
			s = strings.ToLower(strings.TrimSpace(s))
			if !slices.Contains(LogSources, s) {
				return f, fmt.Errorf("--source %q: use %s", s, strings.Join(LogSources, " or "))
			}
			if !slices.Contains(f.Sources, s) {
				f.Sources = append(f.Sources, s)
			}
		}
	}
	return f, nil
}

func logsCmd(dial DialFunc) *cobra.Command {
	var (
		follow        bool
		tail          uint32
		since, level  string
		sourceFilters []string
	)
	cmd := &cobra.Command{
		Use:   "logs NAME [--follow] [--tail N] [--since D] [--level L] [--source S]",
		Short: "Show a sandbox's logs (main process output and supervisor events)",
		Example: `  openshell sandbox logs dev --since 10m --level warn
  openshell sandbox logs dev -f --source sandbox`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			flt, err := ParseLogFilter(since, level, sourceFilters, time.Now())
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			api, closeFn, err := connect(ctx, dial)
			if err != nil {
				return err
			}
			defer closeFn()
			id, err := resolve(ctx, api, args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !follow {
				resp, err := api.GetSandboxLogs(ctx, &pb.GetSandboxLogsRequest{SandboxId: id, Lines: tail,
					SinceMs: flt.SinceMs, MinLevel: flt.MinLevel, Sources: flt.Sources})
				if err != nil {
					return fmt.Errorf("get logs of sandbox %q: %w", args[0], err)
				}
				for _, l := range resp.GetLogs() {
					fmt.Fprintln(out, FormatLogLine(l))
				}
				return nil
			}
			stream, err := api.WatchSandbox(ctx, &pb.WatchSandboxRequest{Id: id, FollowLogs: true, LogTailLines: tail,
				LogSinceMs: flt.SinceMs, LogMinLevel: flt.MinLevel, LogSources: flt.Sources})
			if err != nil {
				return fmt.Errorf("follow logs of sandbox %q: %w", args[0], err)
			}
			for {
				ev, err := stream.Recv()
				if err != nil {
					if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || ctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("follow logs of sandbox %q: %w", args[0], err)
				}
				if l := ev.GetLog(); l != nil {
					fmt.Fprintln(out, FormatLogLine(l))
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines")
	cmd.Flags().Uint32Var(&tail, "tail", 0, "how many recent lines to show (0 = server default)")
	cmd.Flags().StringVar(&since, "since", "", "only lines newer than this: a duration (10m, 2h) or an RFC 3339 time")
	cmd.Flags().StringVar(&level, "level", "", "only lines at this level or above: "+strings.Join(LogLevels, ", "))
	cmd.Flags().StringArrayVar(&sourceFilters, "source", nil, "only lines from this source: "+strings.Join(LogSources, " or ")+" (repeatable)")
	_ = cmd.RegisterFlagCompletionFunc("level", cobra.FixedCompletions(LogLevels, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("source", cobra.FixedCompletions(LogSources, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}
