//go:build !linux || !cgo

package libkrun

import (
	"fmt"
	"runtime"
)

type lib struct{ path string }

func openLibrary(path string) (*lib, error) {
	return nil, fmt.Errorf("%w: this build (%s, cgo off or not Linux) cannot load %s; build with CGO_ENABLED=1 on Linux", ErrNoLibrary, runtime.GOOS, path)
}

func (l *lib) setLogLevel(uint32) error                               { return errUnreachable }
func (l *lib) createCtx() (uint32, error)                             { return 0, errUnreachable }
func (l *lib) setVMConfig(uint32, uint8, uint32) error                { return errUnreachable }
func (l *lib) setKernel(uint32, string, uint32, string, string) error { return errUnreachable }
func (l *lib) addDisk(uint32, string, string, bool) error             { return errUnreachable }
func (l *lib) addVirtiofs(uint32, string, string) error               { return errUnreachable }
func (l *lib) disableImplicitVsock(uint32) error                      { return errUnreachable }
func (l *lib) addVsock(uint32, uint32) error                          { return errUnreachable }
func (l *lib) addVsockPort(uint32, uint32, string, bool) error        { return errUnreachable }
func (l *lib) setConsoleOutput(uint32, string) error                  { return errUnreachable }
func (l *lib) startEnter(uint32) error                                { return errUnreachable }

var errUnreachable = fmt.Errorf("libkrun: not loaded")
