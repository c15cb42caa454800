package api_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/openshell/openshell/internal/testenv"
)

// TestGeneratedCodeIsFresh regenerates into a temporary tree and compares it
// with the committed code, so a .proto edit without regeneration fails.
func TestGeneratedCodeIsFresh(t *testing.T) {
	if testing.Short() {
		t.Skip("regeneration may install protoc plugins; skipped with -short")
	}
	testenv.RequireCommand(t, "protoc", "apt-get install -y protobuf-compiler")
	out := t.TempDir()
	cmd := exec.CommandContext(t.Context(), "bash", filepath.Join("..", "scripts", "gen-proto.sh"))
	cmd.Env = append(os.Environ(), "OPENSHELL_GEN_OUT="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen-proto.sh: %v\n%s", err, b)
	}
	generated, err := filepath.Glob(filepath.Join(out, "api", "*", "*.go"))
	if err != nil || len(generated) == 0 {
		t.Fatalf("nothing generated under %s (%v)", out, err)
	}
	for _, g := range generated {
		rel, _ := filepath.Rel(out, g)
		want, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("..", rel))
		if err != nil {
			t.Errorf("%s: generated but not committed: %v", rel, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run scripts/gen-proto.sh and commit the result", rel)
		}
	}
	committed, _ := filepath.Glob(filepath.Join("*", "*.pb.go"))
	if len(committed) != len(generated) {
		t.Errorf("%d committed .pb.go files, %d generated: remove stale files", len(committed), len(generated))
	}
}
