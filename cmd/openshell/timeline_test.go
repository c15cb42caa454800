package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/openshell/openshell/api/datamodelv1"
	"github.com/openshell/openshell/api/openshellv1"
)

// TestSandboxGetTimeline: `sandbox get` shows the create timeline as a table (phase,
// when it ended, how long it took, then the total) and -o json carries every step.
func TestSandboxGetTimeline(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 2, 41, 1, 0, time.Local).UnixMicro()
	sb := &openshellv1.Sandbox{Status: &openshellv1.SandboxStatus{CreateTimeline: []*datamodelv1.TimelineStep{
		{Phase: "received", AtUnixUs: t0},
		{Phase: "image", AtUnixUs: t0 + 12_500, TookUs: 12_500},
		{Phase: "ready", AtUnixUs: t0 + 2_012_500, TookUs: 2_000_000},
	}}}
	var out bytes.Buffer
	if err := printSandboxDetail(&out, sb); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var rows [][]string
	for i, l := range lines {
		if strings.HasPrefix(l, "Create timeline:") {
			for _, r := range lines[i+1:] {
				rows = append(rows, strings.Fields(r))
			}
		}
	}
	want := [][]string{
		{"PHASE", "AT", "TOOK"},
		{"received", "02:41:01.000", "0.0", "ms"},
		{"image", "02:41:01.012", "12.5", "ms"},
		{"ready", "02:41:03.012", "2000.0", "ms"},
		{"total", "2012.5", "ms"},
	}
	if len(rows) != len(want) {
		t.Fatalf("timeline table:\n%s", out.String())
	}
	for i := range want {
		if strings.Join(rows[i], " ") != strings.Join(want[i], " ") {
			t.Errorf("row %d = %q, want %q\n%s", i, rows[i], want[i], out.String())
		}
	}

	out.Reset()
	if err := (&app{output: "json"}).printSandbox(&out, sb); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Status struct {
			Timeline []map[string]any `json:"create_timeline"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil || len(doc.Status.Timeline) != 3 || doc.Status.Timeline[1]["took_us"] != "12500" {
		t.Errorf("json timeline = %+v (%v)\n%s", doc.Status.Timeline, err, out.String())
	}
}
