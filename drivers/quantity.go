package drivers

import (
	"fmt"
	"math"
	"math/big"
	"strings"
)

// Resource quantities arrive as Kubernetes quantity strings ("500m", "2", "1.5",
// "512Mi", "1G", "1e9"). Docker wants NanoCPUs and bytes, so parseQuantity turns the
// string into an exact rational and the callers scale and round it.

// quantitySuffixes maps a suffix to its multiplier (binary SI and decimal SI).
var quantitySuffixes = map[string]*big.Rat{
	"":   big.NewRat(1, 1),
	"n":  big.NewRat(1, 1_000_000_000),
	"u":  big.NewRat(1, 1_000_000),
	"m":  big.NewRat(1, 1000),
	"k":  big.NewRat(1000, 1),
	"M":  big.NewRat(1_000_000, 1),
	"G":  big.NewRat(1_000_000_000, 1),
	"T":  big.NewRat(1_000_000_000_000, 1),
	"P":  big.NewRat(1_000_000_000_000_000, 1),
	"E":  big.NewRat(1_000_000_000_000_000_000, 1),
	"Ki": big.NewRat(1<<10, 1),
	"Mi": big.NewRat(1<<20, 1),
	"Gi": big.NewRat(1<<30, 1),
	"Ti": big.NewRat(1<<40, 1),
	"Pi": big.NewRat(1<<50, 1),
	"Ei": big.NewRat(1<<60, 1),
}

// maxQuantityLen bounds the input so a hostile string cannot make big.Rat work hard.
const maxQuantityLen = 64

// parseQuantity parses a non-negative Kubernetes quantity into an exact rational.
func parseQuantity(s string) (*big.Rat, error) {
	if s == "" {
		return nil, fmt.Errorf("empty quantity")
	}
	if len(s) > maxQuantityLen {
		return nil, fmt.Errorf("quantity %.20q… is longer than %d characters", s, maxQuantityLen)
	}
	num := s
	if strings.HasPrefix(num, "+") {
		num = num[1:]
	} else if strings.HasPrefix(num, "-") {
		return nil, fmt.Errorf("quantity %q is negative", s)
	}
	// The number: digits with at most one '.', at least one digit.
	i, digits, dots := 0, 0, 0
	for ; i < len(num); i++ {
		c := num[i]
		if c >= '0' && c <= '9' {
			digits++
		} else if c == '.' {
			dots++
		} else {
			break
		}
	}
	if digits == 0 || dots > 1 {
		return nil, fmt.Errorf("quantity %q: want a number such as 500m, 2, 1.5, 512Mi or 1Gi", s)
	}
	mant, ok := new(big.Rat).SetString(num[:i])
	if !ok {
		return nil, fmt.Errorf("quantity %q: bad number %q", s, num[:i])
	}
	suffix := num[i:]
	if mult, ok := quantitySuffixes[suffix]; ok {
		return mant.Mul(mant, mult), nil
	}
	// Decimal exponent: e3, E-2, e+6.
	if suffix[0] == 'e' || suffix[0] == 'E' {
		exp := suffix[1:]
		neg := false
		if strings.HasPrefix(exp, "+") {
			exp = exp[1:]
		} else if strings.HasPrefix(exp, "-") {
			neg, exp = true, exp[1:]
		}
		if exp == "" || len(exp) > 2 || strings.Trim(exp, "0123456789") != "" {
			return nil, fmt.Errorf("quantity %q: bad exponent %q", s, suffix)
		}
		var n int64
		for _, c := range exp {
			n = n*10 + int64(c-'0')
		}
		p := new(big.Int).Exp(big.NewInt(10), big.NewInt(n), nil)
		if neg {
			return mant.Quo(mant, new(big.Rat).SetInt(p)), nil
		}
		return mant.Mul(mant, new(big.Rat).SetInt(p)), nil
	}
	return nil, fmt.Errorf("quantity %q: unknown suffix %q (use m, k, M, G, Ki, Mi, Gi, …)", s, suffix)
}

// ceilInt64 rounds r (≥ 0) up to an integer, failing when it does not fit an int64.
func ceilInt64(r *big.Rat) (int64, bool) {
	q, m := new(big.Int).QuoRem(r.Num(), r.Denom(), new(big.Int))
	if m.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	if !q.IsInt64() {
		return 0, false
	}
	return q.Int64(), true
}

// ParseCPU turns a CPU quantity ("500m", "2") into Docker NanoCPUs.
func ParseCPU(s string) (int64, error) {
	r, err := parseQuantity(s)
	if err != nil {
		return 0, err
	}
	n, ok := ceilInt64(r.Mul(r, big.NewRat(1_000_000_000, 1)))
	if !ok || n > math.MaxInt64/2 {
		return 0, fmt.Errorf("cpu quantity %q is too large", s)
	}
	return n, nil
}

// ParseMemory turns a memory quantity ("512Mi", "1Gi", "1e9") into bytes, rounding up.
func ParseMemory(s string) (int64, error) {
	r, err := parseQuantity(s)
	if err != nil {
		return 0, err
	}
	n, ok := ceilInt64(r)
	if !ok {
		return 0, fmt.Errorf("memory quantity %q is too large", s)
	}
	return n, nil
}
