package sshcmds

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/go-git/go-git/v5/plumbing/format/gitignore"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/internal/streamconn"
	"github.com/openshell/openshell/supervisor/transfer"
)

// progressMin is the transfer size from which a progress bar is drawn.
const progressMin = 8 << 20

// progress draws a one-line bar on a terminal stderr for large transfers.
type progress struct {
	total int64
	done  atomic.Int64
	out   io.Writer
	stop  chan struct{}
	fin   chan struct{}
}

func startProgress(stderr io.Writer, total int64) *progress {
	p := &progress{total: total, out: stderr}
	f, ok := stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) || total < progressMin {
		return p
	}
	p.stop, p.fin = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.fin)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-p.stop:
				p.draw(start)
				fmt.Fprintln(p.out)
				return
			case <-t.C:
				p.draw(start)
			}
		}
	}()
	return p
}

func (p *progress) draw(start time.Time) {
	d := p.done.Load()
	pct := float64(d) / float64(max(p.total, 1))
	const width = 30
	n := int(pct * width)
	bar := make([]byte, width)
	for i := range bar {
		if i < n {
			bar[i] = '='
		} else {
			bar[i] = ' '
		}
	}
	rate := float64(d) / max(time.Since(start).Seconds(), 0.001)
	fmt.Fprintf(p.out, "\r[%s] %5.1f%% %s/%s %s/s ", bar, pct*100, humanize.IBytes(uint64(d)), humanize.IBytes(uint64(p.total)), humanize.IBytes(uint64(rate)))
}

func (p *progress) finish() {
	if p.stop != nil {
		close(p.stop)
		<-p.fin
	}
}

// Options tune an upload.
type Options struct {
	// NoGitIgnore sends everything; by default paths matched by the tree's
	// .gitignore files (and .git itself) stay local.
	NoGitIgnore bool
}

// Summary is what `-o json` prints after a transfer.
type Summary struct {
	Direction string `json:"direction"`
	Source    string `json:"source"`
	Dest      string `json:"destination"`
	transfer.Result
	Skipped int     `json:"ignored,omitempty"` // entries left out by .gitignore
	Seconds float64 `json:"seconds"`
}

// gitIgnore builds the upload filter from the .gitignore files below root (each
// file's patterns apply to its own directory, as git reads them) and always leaves
// out .git itself.
func gitIgnore(root string, skipped *int) (transfer.Skip, error) {
	st, err := os.Stat(root)
	if err != nil || !st.IsDir() {
		return nil, err
	}
	var patterns []gitignore.Pattern
	read := func(dir string, domain []string) error {
		b, err := os.ReadFile(filepath.Join(dir, ".gitignore"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimRight(line, "\r")
			if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
				continue
			}
			patterns = append(patterns, gitignore.ParsePattern(line, domain))
		}
		return nil
	}
	if err := read(root, nil); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	return func(rel string, isDir bool) bool {
		parts := strings.Split(rel, "/")
		if parts[len(parts)-1] == ".git" {
			*skipped++
			return true
		}
		if gitignore.NewMatcher(patterns).Match(parts, isDir) {
			*skipped++
			return true
		}
		// Walking is depth first, so a directory's own .gitignore is read before
		// its contents are matched.
		if isDir && !seen[rel] {
			seen[rel] = true
			_ = read(filepath.Join(root, filepath.FromSlash(rel)), parts)
		}
		return false
	}, nil
}

// tarRelay is one transfer on a relay of its own (ForwardTcp with the transfer
// target): the tar stream goes to the sandbox's supervisor without SSH, framed as
// the transfer package describes.
type tarRelay struct {
	conn *streamconn.Conn
	in   *transfer.FrameReader // the supervisor's data, then its exit frame
}

// openTar opens the transfer relay for req through the gateway, authorised by an
// SSH session token as an SSH connection would be.
func openTar(ctx context.Context, api pb.OpenShellClient, sandboxID string, req transfer.Request) (*tarRelay, error) {
	sess, err := api.CreateSshSession(ctx, &pb.CreateSshSessionRequest{SandboxId: sandboxID})
	if err != nil {
		return nil, fmt.Errorf("create a session for sandbox %s: %w", sandboxID, err)
	}
	dir := pb.TransferRelayTarget_DIRECTION_UPLOAD
	if req.Op == transfer.OpDownload {
		dir = pb.TransferRelayTarget_DIRECTION_DOWNLOAD
	}
	c, err := openForward(ctx, api, &pb.TcpForwardInit{SandboxId: sandboxID, AuthorizationToken: sess.GetToken(),
		Target: &pb.TcpForwardInit_Transfer{Transfer: &pb.TransferRelayTarget{Direction: dir, Path: req.Path}}})
	if err != nil {
		return nil, err
	}
	return &tarRelay{conn: c, in: transfer.NewFrameReader(c, true)}, nil
}

func (t *tarRelay) Close() error { return t.conn.Close() }

// wait reads what is left up to the exit frame and returns the server's error.
func (t *tarRelay) wait(ctx context.Context, what string) error {
	stop := context.AfterFunc(ctx, func() { t.conn.Close() })
	defer stop()
	_, err := io.Copy(io.Discard, t.in)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, gwErr(err))
	}
	e := t.in.Exit()
	if e.Code == 0 {
		return nil
	}
	if e.Error == "" {
		e.Error = fmt.Sprintf("the sandbox's transfer server ended with status %d", e.Code)
	}
	return fmt.Errorf("%s: %s", what, e.Error)
}

// gwErr says what a gRPC status from the relay means when it is one.
func gwErr(err error) error {
	if st, ok := status.FromError(errors.Unwrap(err)); ok && st.Code() != codes.Unknown {
		return fmt.Errorf("the gateway ended the transfer: %s", st.Message())
	}
	return err
}

// Upload copies the local file or directory src to dst in the sandbox as one tar
// stream, written by the supervisor as the sandbox user. An existing remote
// directory dst receives src under its base name; dst "" is the working directory.
func Upload(ctx context.Context, api pb.OpenShellClient, sandboxID, src, dst string, o Options, stderr io.Writer) (Summary, error) {
	start := time.Now()
	sum := Summary{Direction: "upload", Source: src, Dest: dst}
	if _, err := os.Stat(src); err != nil {
		return sum, fmt.Errorf("upload: %w", err)
	}
	if dst == "" {
		dst = "."
	}
	var skip transfer.Skip
	if !o.NoGitIgnore {
		var err error
		var n int // counted by the sizing walk; the writing walk counts again
		if skip, err = gitIgnore(src, &n); err != nil {
			return sum, fmt.Errorf("upload: read .gitignore: %w", err)
		}
	}
	total, err := transfer.Size(src, skip)
	if err != nil {
		return sum, fmt.Errorf("upload: %w", err)
	}
	if !o.NoGitIgnore {
		if skip, err = gitIgnore(src, &sum.Skipped); err != nil {
			return sum, fmt.Errorf("upload: read .gitignore: %w", err)
		}
	}
	tc, err := openTar(ctx, api, sandboxID, transfer.Request{Op: transfer.OpUpload, Path: dst})
	if err != nil {
		return sum, fmt.Errorf("upload: %w", err)
	}
	defer tc.Close()
	stop := context.AfterFunc(ctx, func() { tc.Close() })
	defer stop()
	p := startProgress(stderr, total)
	name := filepath.Base(filepath.Clean(src))
	if abs, err := filepath.Abs(src); err == nil {
		name = filepath.Base(abs)
	}
	// The reply is read while sending: a refusal arrives before the stream ends.
	type reply struct {
		out []byte
		err error
	}
	replied := make(chan reply, 1)
	go func() {
		out, err := io.ReadAll(tc.in)
		replied <- reply{out, err}
	}()
	// Buffered: a tree of small files would otherwise send a frame per header.
	bw := bufio.NewWriterSize(transfer.FrameWriter{W: tc.conn}, 1<<20)
	werr := transfer.WriteTree(bw, src, name, skip, func(n int64) { p.done.Add(n) })
	if werr == nil {
		werr = bw.Flush()
	}
	if werr == nil {
		werr = transfer.WriteEnd(tc.conn)
	}
	p.finish()
	var r reply
	select {
	case r = <-replied:
	case <-ctx.Done():
		return sum, ctx.Err()
	}
	out := r.out
	if err := tc.wait(ctx, "upload"); err != nil {
		return sum, err
	}
	if werr != nil {
		return sum, fmt.Errorf("upload: %w", werr)
	}
	if err := json.Unmarshal(out, &sum.Result); err != nil {
		return sum, fmt.Errorf("upload: the sandbox's reply %q: %w", out, err)
	}
	sum.Dest, sum.Seconds = sum.Result.Path, time.Since(start).Seconds()
	return sum, nil
}

// Download copies the sandbox file or directory src to the local dst. An existing
// local directory dst receives src under its base name. Entries are checked as on
// upload: a stream from the sandbox cannot write outside dst.
func Download(ctx context.Context, api pb.OpenShellClient, sandboxID, src, dst string, stderr io.Writer) (Summary, error) {
	start := time.Now()
	sum := Summary{Direction: "download", Source: src, Dest: dst}
	if dst == "" {
		dst = "."
	}
	tc, err := openTar(ctx, api, sandboxID, transfer.Request{Op: transfer.OpDownload, Path: src})
	if err != nil {
		return sum, fmt.Errorf("download: %w", err)
	}
	defer tc.Close()
	stop := context.AfterFunc(ctx, func() { tc.Close() })
	defer stop()
	if err := transfer.WriteEnd(tc.conn); err != nil {
		return sum, fmt.Errorf("download %s: %w", src, err)
	}
	br := bufio.NewReaderSize(tc.in, 1<<20)
	line, herr := br.ReadBytes('\n')
	var hdr transfer.Header
	if herr == nil {
		herr = json.Unmarshal(line, &hdr)
	}
	if herr != nil {
		_, _ = io.Copy(io.Discard, br)
		if err := tc.wait(ctx, "download "+src); err != nil {
			return sum, err
		}
		return sum, fmt.Errorf("download %s: bad reply from the sandbox: %w", src, herr)
	}
	root, as, where, err := transfer.OpenTarget(dst, nil)
	if err != nil {
		return sum, fmt.Errorf("download: %w", err)
	}
	defer root.Close()
	p := startProgress(stderr, hdr.Bytes)
	res, xerr := transfer.Extract(root, as, br, func(n int64) { p.done.Add(n) })
	p.finish()
	if xerr != nil { // a refused entry: stop the sender rather than drain it
		return sum, fmt.Errorf("download %s: %w", src, xerr)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return sum, fmt.Errorf("download %s: %w", src, err)
	}
	if err := tc.wait(ctx, "download "+src); err != nil {
		return sum, err
	}
	sum.Result = res
	sum.Dest, sum.Seconds = filepath.Join(where, res.Path), time.Since(start).Seconds()
	return sum, nil
}

func transferCmd(dial DialFunc, up bool) *cobra.Command {
	use, short := "upload NAME SRC [DST]", "Copy a local file or directory into a sandbox"
	long := `Copy a local file or directory into a sandbox as one tar stream. The sandbox's
supervisor writes it as the sandbox user, keeping modes, mtimes and symlinks, and only
where the policy lets the agent write (filesystem.read_write). An existing directory DST
receives SRC under its own name; otherwise SRC is created as DST (default: the working
directory). Paths matched by .gitignore files in SRC (and .git) are left out unless
--no-git-ignore is given.`
	if !up {
		use, short = "download NAME SRC [DST]", "Copy a file or directory out of a sandbox"
		long = `Copy a file or directory out of a sandbox as one tar stream, read as the sandbox
user. An existing local directory DST receives SRC under its own name; otherwise SRC is
created as DST (default: the current directory).`
	}
	var o Options
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.RangeArgs(2, 3),
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
			dst := ""
			if len(args) == 3 {
				dst = args[2]
			}
			var sum Summary
			if up {
				sum, err = Upload(ctx, api, id, args[1], dst, o, cmd.ErrOrStderr())
			} else {
				sum, err = Download(ctx, api, id, args[1], dst, cmd.ErrOrStderr())
			}
			if err != nil {
				return err
			}
			if f := cmd.Flag("output"); f != nil && f.Value.String() == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(sum)
			}
			return nil
		},
	}
	if up {
		cmd.Flags().BoolVar(&o.NoGitIgnore, "no-git-ignore", false, "send everything, also what .gitignore files (and .git) would leave out")
	}
	return cmd
}

func uploadCmd(dial DialFunc) *cobra.Command   { return transferCmd(dial, true) }
func downloadCmd(dial DialFunc) *cobra.Command { return transferCmd(dial, false) }
