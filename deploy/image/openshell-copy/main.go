// Command openshell-copy copies files in a container image that has no shell and no
// cp: the gateway Pod's init container seeds the state directory from the Secret every
// replica shares (CA, token signing key, secrets key, gateway id), and a sandbox Pod's
// init container can copy the supervisor out of the gateway image into an emptyDir.
//
//	openshell-copy [-mode 0600] SRC=DST [SRC=DST ...]
//
// Each DST is replaced atomically (the Secret is the source of truth on every start);
// missing parent directories are made 0700.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/openshell/openshell/internal/atomicfile"
)

func main() {
	mode := flag.String("mode", "0600", "permission bits of the copies (octal)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: openshell-copy [-mode 0600] SRC=DST [SRC=DST ...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(*mode, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "openshell-copy:", err)
		os.Exit(1)
	}
}

func run(modeArg string, pairs []string) error {
	m, err := strconv.ParseUint(modeArg, 8, 32)
	if err != nil || m > 0o777 {
		return fmt.Errorf("-mode %q is not octal permission bits; use e.g. 0600 or 0755", modeArg)
	}
	if len(pairs) == 0 {
		return errors.New("nothing to copy; give SRC=DST pairs, e.g. /etc/openshell/shared/ca.key=/var/lib/openshell/gateway/pki/ca.key")
	}
	for _, p := range pairs {
		src, dst, ok := strings.Cut(p, "=")
		if !ok || src == "" || !filepath.IsAbs(dst) {
			return fmt.Errorf("argument %q: want SRC=DST with an absolute DST", p)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("read %s: %w", src, err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return fmt.Errorf("directory for %s: %w", dst, err)
		}
		if err := atomicfile.WriteFile(dst, data, fs.FileMode(m)); err != nil {
			return err
		}
	}
	return nil
}
