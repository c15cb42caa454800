package bundle

import (
	"fmt"
	"io"
	"strings"
)

// newcWriter writes a "newc" (SVR4 without CRC) cpio archive, the format the kernel
// unpacks as initramfs. Only what an initramfs needs: directories, regular files and
// character devices.
type newcWriter struct {
	w   io.Writer
	ino uint32
	err error
}

const (
	modeDir  = 0o040000
	modeReg  = 0o100000
	modeChr  = 0o020000
	trailer  = "TRAILER!!!"
	newcHdrN = 110
)

func (c *newcWriter) header(name string, mode, size, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	name = strings.TrimPrefix(name, "/")
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad(newcHdrN + len(name) + 1)
}

func (c *newcWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *newcWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *newcWriter) Dir(name string, perm uint32) { c.header(name, modeDir|perm, 0, 0, 0) }

func (c *newcWriter) CharDev(name string, perm, major, minor uint32) {
	c.header(name, modeChr|perm, 0, major, minor)
}

func (c *newcWriter) File(name string, perm uint32, data []byte) {
	c.header(name, modeReg|perm, uint32(len(data)), 0, 0)
	c.write(data)
	c.pad(len(data))
}

func (c *newcWriter) Close() error {
	c.ino = 0
	c.header(trailer, 0, 0, 0, 0)
	return c.err
}
