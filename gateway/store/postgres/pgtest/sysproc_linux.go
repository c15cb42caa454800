package pgtest

import "syscall"

// sysProcAttr also asks the kernel to stop the server if the test binary dies
// without running Stop (panic, timeout kill), so no server outlives its tests.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT}
}
