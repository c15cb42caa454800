package quantity

import "testing"

func TestCPUs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		bad  bool
	}{
		{"1", 1, false}, {"500m", 1, false}, {"2", 2, false}, {"2.5", 3, false},
		{"1500m", 2, false}, {"4000m", 4, false}, {"0", 0, true}, {"-1", 0, true},
		{"abc", 0, true}, {"", 0, true}, {"1Qi", 0, true}, {"2e0", 2, false}, {"5000", 0, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := CPUs(tc.in)
			if tc.bad {
				if err == nil {
					t.Fatalf("CPUs(%q) = %d, want error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("CPUs(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestMemoryMiB(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		bad  bool
	}{
		{"4Gi", 4096, false}, {"512Mi", 512, false}, {"1G", 954, false}, {"1e9", 954, false},
		{"1048576", 1, false}, {"1", 1, false}, {"0", 0, true}, {"Mi", 0, true}, {"1.5Gi", 1536, false},
		{"2048Ki", 2, false}, {"1e", 0, true}, {"1e-", 0, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := MemoryMiB(tc.in)
			if tc.bad {
				if err == nil {
					t.Fatalf("MemoryMiB(%q) = %d, want error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("MemoryMiB(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"1", "500m", "4Gi", "1e9", "1.5", "-2", "", "1e-3", "+7Ki"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := Parse(s)
		if err != nil {
			return
		}
		if v == nil {
			t.Fatalf("Parse(%q) returned nil without error", s)
		}
		// Whatever parses must convert without panicking.
		_, _ = CPUs(s)
		_, _ = MemoryMiB(s)
	})
}
