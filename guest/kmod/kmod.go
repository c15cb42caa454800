// Package kmod reads what the guest needs from kernel module files: the module name
// and its dependencies (the "depends=" field of the .modinfo ELF section), and
// orders modules so each loads after what it depends on. It is pure Go so both the
// initramfs builder (host) and the guest init use it.
package kmod

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Info is a module's name and dependencies.
type Info struct {
	Name    string
	Depends []string
}

// Normalize turns a module name into its canonical form (dashes become underscores,
// ".ko" dropped), as the kernel does.
func Normalize(name string) string {
	name = strings.TrimSuffix(name, ".ko")
	return strings.ReplaceAll(name, "-", "_")
}

// ParseModinfo parses the NUL-separated key=value strings of a .modinfo section.
func ParseModinfo(sec []byte) Info {
	var in Info
	for _, kv := range bytes.Split(sec, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			in.Name = Normalize(v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					in.Depends = append(in.Depends, Normalize(d))
				}
			}
		}
	}
	return in
}

// ReadInfo reads the .modinfo section of a .ko file. fallbackName (usually the file
// name) is used when the section has no name= field (older kernels).
func ReadInfo(r io.ReaderAt, fallbackName string) (Info, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return Info{}, fmt.Errorf("kmod %s: not an ELF module: %w", fallbackName, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return Info{}, fmt.Errorf("kmod %s: no .modinfo section", fallbackName)
	}
	b, err := sec.Data()
	if err != nil {
		return Info{}, fmt.Errorf("kmod %s: read .modinfo: %w", fallbackName, err)
	}
	in := ParseModinfo(b)
	if in.Name == "" {
		in.Name = Normalize(fallbackName)
	}
	return in, nil
}

// ErrCycle means the dependency graph has a cycle.
var ErrCycle = errors.New("kmod: dependency cycle")

// Order returns the modules sorted so that dependencies come first. Dependencies not
// in mods are assumed built in (or absent) and ignored. Ties keep name order, so the
// result is deterministic.
func Order(mods []Info) ([]Info, error) {
	byName := make(map[string]Info, len(mods))
	names := make([]string, 0, len(mods))
	for _, m := range mods {
		if _, dup := byName[m.Name]; dup {
			continue
		}
		byName[m.Name] = m
		names = append(names, m.Name)
	}
	sort.Strings(names)
	const (
		unseen = iota
		visiting
		done
	)
	state := make(map[string]int, len(names))
	out := make([]Info, 0, len(names))
	var visit func(n string, path []string) error
	visit = func(n string, path []string) error {
		m, ok := byName[n]
		if !ok {
			return nil
		}
		switch state[n] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("%w: %s", ErrCycle, strings.Join(append(path, n), " -> "))
		}
		state[n] = visiting
		deps := append([]string(nil), m.Depends...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(path, n)); err != nil {
				return err
			}
		}
		state[n] = done
		out = append(out, m)
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// sigMagic ends a module that carries an appended signature; before it sit the
// signature and a 12-byte descriptor whose last 4 bytes are the signature's length
// (big-endian), as scripts/sign-file in the kernel tree writes them.
const sigMagic = "~Module signature appended~\n"

// StripSignature returns data without its appended signature (data itself when it
// has none, or when the trailer does not describe a signature that fits in data).
func StripSignature(data []byte) []byte {
	if !bytes.HasSuffix(data, []byte(sigMagic)) {
		return data
	}
	const descLen = 12
	end := len(data) - len(sigMagic)
	if end < descLen {
		return data
	}
	desc := data[end-descLen : end]
	sigLen := int(binary.BigEndian.Uint32(desc[8:]))
	body := end - descLen - sigLen
	if sigLen <= 0 || body <= 0 {
		return data
	}
	return data[:body]
}
