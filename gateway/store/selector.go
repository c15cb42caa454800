package store

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ParseSelector parses a label selector of the form "k1=v1,k2=v2" (the API's
// label_selector string). Only equality is supported; whitespace around keys and values
// is ignored; an empty string is the empty selector (matches everything). A value may
// be empty ("k=" matches a label k with an empty value). Errors name the bad part.
func ParseSelector(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	sel := make(map[string]string)
	for i, part := range strings.Split(s, ",") {
		item := strings.TrimSpace(part)
		if item == "" {
			return nil, fmt.Errorf("label selector %q: item %d is empty; write k1=v1,k2=v2 without stray commas: %w", s, i+1, ErrInvalid)
		}
		k, v, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("label selector %q: item %q has no '='; write key=value: %w", s, item, ErrInvalid)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if strings.HasSuffix(k, "!") {
			return nil, fmt.Errorf("label selector %q: item %q: only equality (key=value) is supported: %w", s, item, ErrInvalid)
		}
		if err := checkSelectorText(k); err != nil || k == "" {
			if k == "" {
				err = fmt.Errorf("is empty")
			}
			return nil, fmt.Errorf("label selector %q: key of item %q %v: %w", s, item, err, ErrInvalid)
		}
		if strings.Contains(v, "=") {
			return nil, fmt.Errorf("label selector %q: value of item %q contains '='; only one '=' per item: %w", s, item, ErrInvalid)
		}
		if err := checkSelectorText(v); err != nil {
			return nil, fmt.Errorf("label selector %q: value of item %q %v: %w", s, item, err, ErrInvalid)
		}
		if old, dup := sel[k]; dup && old != v {
			return nil, fmt.Errorf("label selector %q: key %q is given twice with different values (%q, %q); nothing can match: %w", s, k, old, v, ErrInvalid)
		}
		sel[k] = v
	}
	return sel, nil
}

func checkSelectorText(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("is not valid UTF-8")
	}
	for _, r := range s {
		switch {
		case unicode.IsSpace(r):
			return fmt.Errorf("contains whitespace")
		case unicode.IsControl(r):
			return fmt.Errorf("contains control character %U", r)
		}
	}
	return nil
}

// FormatSelector renders a selector in the form ParseSelector reads, keys sorted.
func FormatSelector(sel map[string]string) string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(sel)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(sel[k])
	}
	return b.String()
}

// Matches reports whether labels contain every key of sel with the same value.
func Matches(labels, sel map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
