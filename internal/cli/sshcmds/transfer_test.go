package sshcmds

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// runOut is run with the root's -o flag, as the openshell binary has it.
func runOut(t *testing.T, dial DialFunc, args ...string) (string, string, error) {
	t.Helper()
	root := &cobra.Command{Use: "openshell", SilenceUsage: true, SilenceErrors: true}
	root.PersistentFlags().StringP("output", "o", "table", "output format")
	sb := &cobra.Command{Use: "sandbox"}
	sb.AddCommand(Commands(dial)...)
	root.AddCommand(sb)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestUploadHonoursGitIgnoreAndNoGitIgnore(t *testing.T) {
	dial, sandboxDir := setup(t)
	src := filepath.Join(t.TempDir(), "repo")
	for p, body := range map[string]string{
		".gitignore":          "*.log\n# comment\nbuild/\n",
		"main.go":             "package main\n",
		"debug.log":           "noise",
		"build/out.bin":       "binary",
		"sub/.gitignore":      "secret.txt\n!keep.log\n",
		"sub/secret.txt":      "hidden",
		"sub/keep.log":        "kept by negation",
		"sub/code.go":         "package sub\n",
		"other/secret.txt":    "not ignored here: the pattern is sub's",
		".git/HEAD":           "ref: refs/heads/main\n",
		"deep/er/trace.log":   "noise",
		"deep/er/readme.md":   "hi",
		"deep/er/build/x.txt": "ignored by build/ at any depth",
	} {
		p = filepath.Join(src, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, _, err := runOut(t, dial, "-o", "json", "sandbox", "upload", "box", src, "filtered")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".", ".gitignore", "deep", "deep/er", "deep/er/readme.md", "main.go", "other", "other/secret.txt",
		"sub", "sub/.gitignore", "sub/code.go", "sub/keep.log"}
	if got := files(t, filepath.Join(sandboxDir, "filtered")); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("uploaded with .gitignore:\n got %v\nwant %v", got, want)
	}
	var sum Summary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("-o json: %q: %v", out, err)
	}
	// Ignored: debug.log, build/, sub/secret.txt, .git, deep/er/trace.log, deep/er/build.
	if sum.Direction != "upload" || sum.Files != 7 || sum.Skipped != 6 || sum.Dest != filepath.Join(sandboxDir, "filtered") {
		t.Fatalf("summary %+v", sum)
	}

	if _, _, err := runOut(t, dial, "sandbox", "upload", "--no-git-ignore", "box", src, "all"); err != nil {
		t.Fatal(err)
	}
	if got, want := files(t, filepath.Join(sandboxDir, "all")), files(t, src); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("--no-git-ignore:\n got %v\nwant %v", got, want)
	}
}

func TestDownloadJSONSummaryAndErrors(t *testing.T) {
	dial, sandboxDir := setup(t)
	if err := os.WriteFile(filepath.Join(sandboxDir, "result.txt"), []byte("42\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	out, _, err := runOut(t, dial, "-o", "json", "sandbox", "download", "box", "result.txt", filepath.Join(dst, "renamed.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var sum Summary
	if err := json.Unmarshal([]byte(out), &sum); err != nil || sum.Files != 1 || sum.Bytes != 3 || sum.Dest != filepath.Join(dst, "renamed.txt") {
		t.Fatalf("summary %q: %+v %v", out, sum, err)
	}
	st, err := os.Stat(filepath.Join(dst, "renamed.txt"))
	if err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("downloaded file: %v %v", st, err)
	}
	// An upload into a directory that does not exist names it.
	src := filepath.Join(t.TempDir(), "f")
	_ = os.WriteFile(src, []byte("x"), 0o644)
	if _, _, err := runOut(t, dial, "sandbox", "upload", "box", src, "no/such/dir/f"); err == nil || !strings.Contains(err.Error(), "no/such/dir") {
		t.Fatalf("upload into a missing directory: %v", err)
	}
}
