// Package defaultpath holds the PATH a sandbox process gets when nothing sets one:
// the image's config has none, or the guest's init starts without an environment.
package defaultpath

// PATH is the usual Linux search path, root's directories first (Debian's and the
// container engines' default).
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
