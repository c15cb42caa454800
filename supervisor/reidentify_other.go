//go:build !linux

package supervisor

import (
	"errors"
	"time"
)

// errNoHostState: setting the clock or the entropy needs a Linux guest.
var errNoHostState = errors.New("not supported outside a Linux guest")

func setClock(time.Time) error { return errNoHostState }

func reseedRandom([]byte) error { return errNoHostState }
