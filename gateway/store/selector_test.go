package store

import (
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestParseSelector(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    map[string]string
		wantErr string // substring naming the bad part
	}{
		{in: "", want: nil},
		{in: "  ", want: nil},
		{in: "a=1", want: map[string]string{"a": "1"}},
		{in: "a=1,b=2", want: map[string]string{"a": "1", "b": "2"}},
		{in: " a = 1 , b=2 ", want: map[string]string{"a": "1", "b": "2"}},
		{in: "app.kubernetes.io/name=web", want: map[string]string{"app.kubernetes.io/name": "web"}},
		{in: "a=", want: map[string]string{"a": ""}},
		{in: "a=1,a=1", want: map[string]string{"a": "1"}},
		{in: "a=1,,b=2", wantErr: "item 2 is empty"},
		{in: "a=1,", wantErr: "item 2 is empty"},
		{in: "a", wantErr: `item "a" has no '='`},
		{in: "a=1,bogus", wantErr: `item "bogus" has no '='`},
		{in: "=1", wantErr: `key of item "=1" is empty`},
		{in: "a!=1", wantErr: "only equality"},
		{in: "a=b=c", wantErr: `value of item "a=b=c" contains '='`},
		{in: "a b=1", wantErr: "contains whitespace"},
		{in: "a=1 2", wantErr: "contains whitespace"},
		{in: "a=\x01", wantErr: "control character"},
		{in: "a=\xff", wantErr: "not valid UTF-8"},
		{in: "a=1,a=2", wantErr: `key "a" is given twice`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSelector(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("ParseSelector(%q) = %v, %v; want ErrInvalid containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("ParseSelector(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	labels := map[string]string{"app": "web", "tier": "front", "empty": ""}
	for _, tc := range []struct {
		sel  map[string]string
		want bool
	}{
		{nil, true},
		{map[string]string{"app": "web"}, true},
		{map[string]string{"app": "web", "tier": "front"}, true},
		{map[string]string{"empty": ""}, true},
		{map[string]string{"app": "db"}, false},
		{map[string]string{"missing": ""}, false},
		{map[string]string{"app": "web", "tier": "back"}, false},
	} {
		if got := Matches(labels, tc.sel); got != tc.want {
			t.Errorf("Matches(%v, %v) = %v, want %v", labels, tc.sel, got, tc.want)
		}
	}
}

// FuzzParseSelector checks that parsing never panics, errors are ErrInvalid, and a
// parsed selector survives FormatSelector → ParseSelector unchanged.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"", "a=1", "a=1,b=2", " a = 1 ", "a", "=", ",", "a=b=c", "a!=b", "a=1,a=2", "k=\xff", "é=ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSelector(%q) error %v is not ErrInvalid", s, err)
			}
			return
		}
		again, err := ParseSelector(FormatSelector(sel))
		if err != nil {
			t.Fatalf("re-parse of %q (from %q): %v", FormatSelector(sel), s, err)
		}
		if !maps.Equal(sel, again) {
			t.Fatalf("round trip of %q: %v != %v", s, sel, again)
		}
	})
}

func TestDefaultPath(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/x/state")
	if p, err := DefaultPath(); err != nil || p != "/x/state/openshell/gateway/openshell.db" {
		t.Fatalf("DefaultPath with XDG_STATE_HOME = %q, %v", p, err)
	}
	t.Setenv("XDG_STATE_HOME", "relative/ignored")
	t.Setenv("HOME", "/home/u")
	if p, err := DefaultPath(); err != nil || p != "/home/u/.local/state/openshell/gateway/openshell.db" {
		t.Fatalf("DefaultPath fallback = %q, %v", p, err)
	}
}
