package sshcmds

import (
	"errors"
	"fmt"
	"io"
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

func logsCmd(dial DialFunc) *cobra.Command {
	var (
		follow bool
		tail   uint32
	)
	cmd := &cobra.Command{
		Use:   "logs NAME [--follow] [--tail N]",
		Short: "Show a sandbox's logs (main process output and supervisor events)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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
				resp, err := api.GetSandboxLogs(ctx, &pb.GetSandboxLogsRequest{SandboxId: id, Lines: tail})
				if err != nil {
					return fmt.Errorf("get logs of sandbox %q: %w", args[0], err)
				}
				for _, l := range resp.GetLogs() {
					fmt.Fprintln(out, FormatLogLine(l))
				}
				return nil
			}
			stream, err := api.WatchSandbox(ctx, &pb.WatchSandboxRequest{Id: id, FollowLogs: true, LogTailLines: tail})
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
	return cmd
}
