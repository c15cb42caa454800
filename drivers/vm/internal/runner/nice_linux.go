package runner

import "golang.org/x/sys/unix"

// mayRestoreNice says whether this process may set a nice value back to 0 once it
// raised it: with CAP_SYS_NICE, or an RLIMIT_NICE of 20 or more (the limit is 20 -
// the lowest nice allowed). A runner without either (an unprivileged user, a
// container without CAP_SYS_NICE) leaves its pooled VMs at normal priority, since a
// claimed VM must not stay niced.
func mayRestoreNice() bool {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NICE, &rl); err == nil && rl.Cur >= 20 {
		return true
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_NICE/32].Effective&(1<<(unix.CAP_SYS_NICE%32)) != 0
}
