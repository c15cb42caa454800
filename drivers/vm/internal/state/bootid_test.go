package state

import (
	"strings"
	"testing"
	"time"
)

func TestBootIDRoundTrip(t *testing.T) {
	dir := t.TempDir()
	r := &Record{SandboxID: "sb-1", CreatedAt: time.Now().UTC(), Paths: PathsFor(dir)}
	if err := Create(r); err != nil {
		t.Fatal(err)
	}
	if got, _ := Load(dir); got.BootID != "" {
		t.Fatalf("new record has boot id %q", got.BootID)
	}
	if _, err := Update(dir, func(r *Record) error { r.BootID = "4f0c-boot"; r.RunnerPID = 7; return nil }); err != nil {
		t.Fatal(err)
	}
	// A later update that does not touch the field (as the runner's do) keeps it.
	if _, err := Update(dir, func(r *Record) error { r.VMMPID = 8; return nil }); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.BootID != "4f0c-boot" || got.RunnerPID != 7 || got.VMMPID != 8 {
		t.Fatalf("reloaded %+v", got)
	}
	// Records written before the field existed decode with an empty boot id.
	old, err := Decode([]byte(`{"version":1,"sandbox_id":"sb-2","runner_pid":5,"paths":{"dir":"/x"}}`))
	if err != nil || old.BootID != "" || old.RunnerPID != 5 {
		t.Fatalf("old record: %+v %v", old, err)
	}
}

func TestHostBootID(t *testing.T) {
	id, err := HostBootID()
	if err != nil {
		t.Skipf("no %s here: %v", BootIDFile, err)
	}
	if len(id) != 36 || strings.Count(id, "-") != 4 {
		t.Errorf("host boot id %q is not a UUID", id)
	}
	again, _ := HostBootID()
	if again != id {
		t.Errorf("boot id changed within one boot: %q then %q", id, again)
	}
}

func TestParseBootID(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"0a1b2c3d-0000-4000-8000-0123456789ab\n", "0a1b2c3d-0000-4000-8000-0123456789ab", true},
		{"  x  ", "x", true},
		{"", "", false},
		{" \n", "", false},
		{"a b", "", false},
		{"a\x00b", "", false},
		{"caf\xc3\xa9", "", false},
		{strings.Repeat("a", 129), "", false},
	} {
		got, err := ParseBootID(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseBootID(%q) = %q, %v; want %q ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func FuzzParseBootID(f *testing.F) {
	for _, s := range []string{"0a1b2c3d-0000-4000-8000-0123456789ab\n", "", " x ", "a b", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseBootID(s)
		if err != nil {
			if id != "" {
				t.Fatalf("error %v with id %q", err, id)
			}
			return
		}
		if id == "" || len(id) > maxBootID || strings.ContainsAny(id, " \t\r\n") {
			t.Fatalf("accepted bad id %q from %q", id, s)
		}
		// Idempotent: what is stored parses to itself.
		if again, err := ParseBootID(id); err != nil || again != id {
			t.Fatalf("re-parse of %q = %q, %v", id, again, err)
		}
	})
}
