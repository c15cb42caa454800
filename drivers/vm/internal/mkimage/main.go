// Command mkimage writes a one-layer OCI image layout from a root filesystem tar; used
// by scripts/build-base-image.sh.
//
//	go run ./drivers/vm/internal/mkimage --layer rootfs.tar --out DIR [--tag latest]
//	    [--env PATH=...]... [--workdir /sandbox] [--user U] [--cmd /bin/bash]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/openshell/openshell/drivers/vm/ocilayout"
	"github.com/openshell/openshell/internal/defaultpath"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var env, cmd list
	layer := flag.String("layer", "", "root filesystem tar (uncompressed)")
	out := flag.String("out", "", "OCI layout directory to (re)write")
	tag := flag.String("tag", "latest", "tag (org.opencontainers.image.ref.name)")
	workdir := flag.String("workdir", "/sandbox", "image WorkingDir")
	user := flag.String("user", "", "image User")
	flag.Var(&env, "env", "KEY=VALUE (repeatable)")
	flag.Var(&cmd, "cmd", "Cmd element (repeatable)")
	flag.Parse()
	if *layer == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "mkimage: --layer and --out are required")
		os.Exit(2)
	}
	if len(env) == 0 {
		env = list{"PATH=" + defaultpath.PATH}
	}
	d, err := ocilayout.Write(*out, *layer, ocilayout.Options{Tag: *tag, Env: env, WorkingDir: *workdir, User: *user, Cmd: cmd})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("mkimage: wrote %s:%s (%s)\n", *out, *tag, d)
}
