package sshcmds

import (
	"strings"
	"testing"
)

func TestParseForward(t *testing.T) {
	for _, tc := range []struct {
		in            string
		local, remote uint16
		err           string
	}{
		{in: "8080", local: 8080, remote: 8080},
		{in: "9000:8080", local: 9000, remote: 8080},
		{in: "0", err: `"0" is not a port`},
		{in: "70000", err: `"70000" is not a port`},
		{in: "http", err: "write PORT or LOCAL:REMOTE"},
		{in: "9000:", err: `"" is not a port`},
		{in: "1:2:3", err: `"2:3" is not a port`},
	} {
		got, err := ParseForward(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseForward(%q) = %v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got.Local != tc.local || got.Remote != tc.remote {
			t.Errorf("ParseForward(%q) = %+v, %v", tc.in, got, err)
		}
	}
}

// Flag values never panic, and an accepted forward prints back to what parses to it.
func FuzzParseForward(f *testing.F) {
	for _, s := range []string{"8080", "9000:8080", "0", ":", "1:2:3", "65536", " 80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseForward(s)
		if err != nil {
			return
		}
		if spec.Local == 0 || spec.Remote == 0 {
			t.Fatalf("ParseForward(%q) accepted port 0: %+v", s, spec)
		}
		back, err := ParseForward(spec.String())
		if err != nil || back != spec {
			t.Fatalf("round trip of %q: %+v → %q → %+v, %v", s, spec, spec.String(), back, err)
		}
	})
}
