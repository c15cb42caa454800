package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/openshell/openshell/api/openshellv1"
)

// TestDetailFromSnapshot: sandbox get names the snapshot a sandbox was created from,
// and says nothing of snapshots for one created cold.
func TestDetailFromSnapshot(t *testing.T) {
	for _, c := range []struct{ from, want string }{{"base", "From snapshot:"}, {"", ""}} {
		var out bytes.Buffer
		sb := &openshellv1.Sandbox{Status: &openshellv1.SandboxStatus{FromSnapshot: c.from}}
		if err := printSandboxDetail(&out, sb); err != nil {
			t.Fatal(err)
		}
		got := strings.Contains(out.String(), "From snapshot:") && strings.Contains(out.String(), c.from)
		if got != (c.want != "") {
			t.Fatalf("from_snapshot %q: detail\n%s", c.from, out.String())
		}
	}
}
