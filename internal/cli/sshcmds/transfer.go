package sshcmds

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
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
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

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

// tarChan is one "openshell-tar" subsystem on its own session channel.
type tarChan struct {
	ssh.Channel
	errb   bytes.Buffer
	errc   chan struct{} // closed when stderr is drained
	status chan int      // the exit status, once the channel closed (-1: none)
}

// openTar starts the transfer subsystem with req (sent as an env request first).
func openTar(ctx context.Context, cl *ssh.Client, req transfer.Request) (*tarChan, error) {
	ch, reqs, err := cl.OpenChannel("session", nil)
	if err != nil {
		return nil, err
	}
	t := &tarChan{Channel: ch, errc: make(chan struct{}), status: make(chan int, 1)}
	go func() {
		code := -1
		for r := range reqs {
			if r.Type == "exit-status" && len(r.Payload) >= 4 {
				code = int(binary.BigEndian.Uint32(r.Payload))
			}
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
		t.status <- code
	}()
	go func() {
		defer close(t.errc)
		_, _ = io.Copy(&t.errb, ch.Stderr())
	}()
	stop := context.AfterFunc(ctx, func() { ch.Close() })
	b, _ := json.Marshal(req)
	ok, err := ch.SendRequest("env", true, ssh.Marshal(struct{ Name, Value string }{transfer.EnvRequest, string(b)}))
	if err == nil && ok {
		ok, err = ch.SendRequest("subsystem", true, ssh.Marshal(struct{ Value string }{transfer.Subsystem}))
	}
	stop()
	if err == nil && !ok {
		err = fmt.Errorf("the sandbox refused the %s subsystem (an older supervisor?)", transfer.Subsystem)
	}
	if err != nil {
		ch.Close()
		return nil, err
	}
	return t, nil
}

// wait waits for the server's exit and returns its error (stderr) if it failed.
func (t *tarChan) wait(ctx context.Context, what string) error {
	stop := context.AfterFunc(ctx, func() { t.Close() })
	defer stop()
	code := <-t.status
	<-t.errc
	t.Close()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if code == 0 {
		return nil
	}
	msg := strings.TrimSpace(t.errb.String())
	if msg == "" {
		msg = fmt.Sprintf("the sandbox's transfer server ended with status %d", code)
	}
	return fmt.Errorf("%s: %s", what, msg)
}

// Upload copies the local file or directory src to dst in the sandbox as one tar
// stream, written by the supervisor as the sandbox user. An existing remote
// directory dst receives src under its base name; dst "" is the working directory.
func Upload(ctx context.Context, cl *ssh.Client, src, dst string, o Options, stderr io.Writer) (Summary, error) {
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
	tc, err := openTar(ctx, cl, transfer.Request{Op: transfer.OpUpload, Path: dst})
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
	// Buffered: a tree of small files would otherwise send a packet per header.
	bw := bufio.NewWriterSize(tc, 256<<10)
	werr := transfer.WriteTree(bw, src, name, skip, func(n int64) { p.done.Add(n) })
	if werr == nil {
		werr = bw.Flush()
	}
	_ = tc.CloseWrite()
	p.finish()
	out, _ := io.ReadAll(tc)
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
func Download(ctx context.Context, cl *ssh.Client, src, dst string, stderr io.Writer) (Summary, error) {
	start := time.Now()
	sum := Summary{Direction: "download", Source: src, Dest: dst}
	if dst == "" {
		dst = "."
	}
	tc, err := openTar(ctx, cl, transfer.Request{Op: transfer.OpDownload, Path: src})
	if err != nil {
		return sum, fmt.Errorf("download: %w", err)
	}
	defer tc.Close()
	stop := context.AfterFunc(ctx, func() { tc.Close() })
	defer stop()
	_ = tc.CloseWrite()
	br := bufio.NewReaderSize(tc, 1<<20)
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
			cl, err := sshClient(ctx, api, id)
			if err != nil {
				return err
			}
			defer cl.Close()
			dst := ""
			if len(args) == 3 {
				dst = args[2]
			}
			var sum Summary
			if up {
				sum, err = Upload(ctx, cl, args[1], dst, o, cmd.ErrOrStderr())
			} else {
				sum, err = Download(ctx, cl, args[1], dst, cmd.ErrOrStderr())
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
