//go:build !linux || !(amd64 || arm64)

package confine

import (
	"os/exec"
	"time"
)

// WaitFlag makes the helper a spare: `confine-exec --wait FD`.
const WaitFlag = "--wait"

func waitMain([]string) error { return ErrNotSupported }

// Spares keeps no spare here: Run always answers "none".
type Spares[P any] struct {
	Self    string
	Start   func(*exec.Cmd) (P, error)
	Kill    func(P)
	Timeout time.Duration
	Keep    int
}

// Run never has a spare here.
func (s *Spares[P]) Run(Spec, *exec.Cmd) (p P, ok bool, err error) { return p, false, nil }

// SetKeep does nothing here.
func (s *Spares[P]) SetKeep(int) {}

// Fill does nothing here.
func (s *Spares[P]) Fill() {}

// Close does nothing here.
func (s *Spares[P]) Close() {}
