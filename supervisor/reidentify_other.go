//go:build !linux

package supervisor

import "time"

func setClock(time.Time) error { return errNoHostState }

func reseedRandom([]byte) error { return errNoHostState }
