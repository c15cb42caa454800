// Package quantity parses the Kubernetes resource quantity strings the gateway copies
// into DriverResourceRequirements ("500m", "2", "4Gi", "512M", "1e9") into the two
// numbers a VM needs: whole vCPUs and MiB of guest memory.
package quantity

import (
	"fmt"
	"math"
	"math/big"
	"strings"
)

// suffixes maps a quantity suffix to its multiplier as a rational number.
var suffixes = map[string]*big.Rat{
	"":   big.NewRat(1, 1),
	"m":  big.NewRat(1, 1000),
	"u":  big.NewRat(1, 1000_000),
	"n":  big.NewRat(1, 1000_000_000),
	"k":  big.NewRat(1000, 1),
	"M":  big.NewRat(1000_000, 1),
	"G":  big.NewRat(1000_000_000, 1),
	"T":  new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(12), nil)),
	"P":  new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(15), nil)),
	"E":  new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(18), nil)),
	"Ki": new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), 10)),
	"Mi": new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), 20)),
	"Gi": new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), 30)),
	"Ti": new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), 40)),
	"Pi": new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), 50)),
	"Ei": new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), 60)),
}

// Parse returns the value of a quantity string as an exact rational.
func Parse(s string) (*big.Rat, error) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 64 {
		return nil, fmt.Errorf("quantity %q: want a number with an optional suffix such as 500m, 2, 512Mi or 4Gi", s)
	}
	// Split the numeric part from the suffix: digits, one dot, an optional sign first.
	i := 0
	if s[0] == '+' || s[0] == '-' {
		i++
	}
	dot := false
	digits := 0
	for i < len(s) {
		c := s[i]
		if c >= '0' && c <= '9' {
			digits++
		} else if c == '.' && !dot {
			dot = true
		} else {
			break
		}
		i++
	}
	if digits == 0 {
		return nil, fmt.Errorf("quantity %q: no digits: want e.g. 500m, 2, 512Mi or 4Gi", s)
	}
	num, suf := s[:i], s[i:]
	v, ok := new(big.Rat).SetString(num)
	if !ok {
		return nil, fmt.Errorf("quantity %q: bad number %q", s, num)
	}
	// Decimal exponent form: 1e9, 5E3.
	if len(suf) > 1 && (suf[0] == 'e' || suf[0] == 'E') {
		exp := 0
		neg := false
		j := 1
		if suf[j] == '+' || suf[j] == '-' {
			neg = suf[j] == '-'
			j++
		}
		if j == len(suf) {
			return nil, fmt.Errorf("quantity %q: bad exponent %q", s, suf)
		}
		for ; j < len(suf); j++ {
			if suf[j] < '0' || suf[j] > '9' || exp > 100 {
				return nil, fmt.Errorf("quantity %q: bad exponent %q", s, suf)
			}
			exp = exp*10 + int(suf[j]-'0')
		}
		m := new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(exp)), nil))
		if neg {
			m.Inv(m)
		}
		return v.Mul(v, m), nil
	}
	mul, ok := suffixes[suf]
	if !ok {
		return nil, fmt.Errorf("quantity %q: unknown suffix %q (use m, k, M, G, T, Ki, Mi, Gi, Ti)", s, suf)
	}
	return v.Mul(v, mul), nil
}

// CPUs converts a CPU quantity into whole vCPUs, rounding up ("500m" → 1, "2.5" → 3).
func CPUs(s string) (int, error) {
	v, err := Parse(s)
	if err != nil {
		return 0, err
	}
	if v.Sign() <= 0 {
		return 0, fmt.Errorf("cpu quantity %q: must be positive", s)
	}
	n := ceil(v)
	if n > 1024 {
		return 0, fmt.Errorf("cpu quantity %q: %d vCPUs is more than a VM can have (max 1024)", s, n)
	}
	return int(n), nil
}

// MemoryMiB converts a memory quantity in bytes into MiB, rounding up ("4Gi" → 4096,
// "1G" → 954).
func MemoryMiB(s string) (int, error) {
	v, err := Parse(s)
	if err != nil {
		return 0, err
	}
	if v.Sign() <= 0 {
		return 0, fmt.Errorf("memory quantity %q: must be positive", s)
	}
	mib := new(big.Rat).Quo(v, big.NewRat(1<<20, 1))
	n := ceil(mib)
	if n > 16<<20 { // 16 TiB
		return 0, fmt.Errorf("memory quantity %q: too large for a VM", s)
	}
	return int(n), nil
}

func ceil(v *big.Rat) int64 {
	q, r := new(big.Int).QuoRem(v.Num(), v.Denom(), new(big.Int))
	if r.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	if !q.IsInt64() {
		return math.MaxInt64
	}
	return q.Int64()
}
