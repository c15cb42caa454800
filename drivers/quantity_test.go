package drivers

import (
	"strings"
	"testing"
)

func TestParseCPU(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"500m", 500_000_000, ""},
		{"2", 2_000_000_000, ""},
		{"1.5", 1_500_000_000, ""},
		{"0.25", 250_000_000, ""},
		{"+1", 1_000_000_000, ""},
		{"1e3m", 0, "bad exponent"},
		{"100n", 100, ""},
		{"1u", 1000, ""},
		{"0", 0, ""},
		{"", 0, "empty"},
		{"-1", 0, "negative"},
		{"abc", 0, "want a number"},
		{"1.2.3", 0, "want a number"},
		{"1x", 0, "unknown suffix"},
		{"1e", 0, "bad exponent"},
		{"1e999", 0, "bad exponent"},
		{"9E", 0, "too large"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseCPU(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseCPU(%q) = %d, %v; want error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseCPU(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParseMemory(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"512Mi", 512 << 20, ""},
		{"1Gi", 1 << 30, ""},
		{"1G", 1_000_000_000, ""},
		{"1.5Gi", 3 << 29, ""},
		{"64Mi", 64 << 20, ""},
		{"1e9", 1_000_000_000, ""},
		{"1E-1", 1, ""}, // rounds up to a whole byte
		{"128974848", 128974848, ""},
		{"100k", 100_000, ""},
		{"7Ei", 7 << 60, ""},
		{"8Ei", 0, "too large"},
		{"1Mib", 0, "unknown suffix"},
		{"Gi", 0, "want a number"},
		{strings.Repeat("9", 70), 0, "longer than"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseMemory(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseMemory(%q) = %d, %v; want error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseMemory(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

// FuzzParseQuantity checks that any input either fails or yields a non-negative value
// that does not depend on a leading '+', and never panics.
func FuzzParseQuantity(f *testing.F) {
	for _, s := range []string{"500m", "2", "1.5Gi", "1e3", "+4Ki", "-1", "", ".", "1e-9", "9Ei", "0.000001n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mem, err := ParseMemory(s)
		if err != nil {
			return
		}
		if mem < 0 {
			t.Fatalf("ParseMemory(%q) = %d < 0", s, mem)
		}
		if !strings.HasPrefix(s, "+") && !strings.HasPrefix(s, "-") {
			if mem2, err2 := ParseMemory("+" + s); len(s) < maxQuantityLen && (err2 != nil || mem2 != mem) {
				t.Fatalf("ParseMemory(+%q) = %d, %v; want %d", s, mem2, err2, mem)
			}
		}
		if cpu, err := ParseCPU(s); err == nil && cpu < 0 {
			t.Fatalf("ParseCPU(%q) = %d < 0", s, cpu)
		}
	})
}
