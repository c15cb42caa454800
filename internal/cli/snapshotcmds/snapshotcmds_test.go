package snapshotcmds

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/openshell/openshell/api/snapshotv1"
)

func TestOutputOf(t *testing.T) {
	for _, tc := range []struct {
		set  string
		want string
		bad  bool
	}{{"", "table", false}, {"json", "json", false}, {"yaml", "", true}, {"xml", "", true}} {
		c := &cobra.Command{}
		c.Flags().String("output", "", "")
		if tc.set != "" {
			_ = c.Flags().Set("output", tc.set)
		}
		got, err := outputOf(c)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("-o %q: %q, %v", tc.set, got, err)
		}
		if tc.bad && !strings.Contains(err.Error(), "table or json") {
			t.Errorf("-o %q: error %q does not name the choices", tc.set, err)
		}
	}
}

func TestPrintTable(t *testing.T) {
	var b bytes.Buffer
	printTable(&b, nil, time.Now())
	if !strings.Contains(b.String(), "openshell sandbox snapshot") {
		t.Fatalf("empty list says %q: want how to take one", b.String())
	}
	b.Reset()
	now := time.Now()
	printTable(&b, []*snapshotv1.Snapshot{{Name: "base", SourceSandboxName: "box", Image: "img", Vcpus: 2, MemoryMib: 512, Bytes: 3 << 20, CreatedAtMs: now.Add(-time.Minute).UnixMilli()}}, now)
	for _, want := range []string{"NAME", "base", "box", "img", "512 MiB", "3.0 MiB", "1m0s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table %q lacks %q", b.String(), want)
		}
	}
}
