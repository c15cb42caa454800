// Command staticinit is a trivial static program used to build test initramfs files.
package main

import "os"

func main() { os.Stdout.WriteString("staticinit\n") }
