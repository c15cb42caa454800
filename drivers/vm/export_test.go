package vm

import "time"

// SetLockWait shortens the state-dir lock wait in tests.
func SetLockWait(d time.Duration) (restore func()) {
	old := lockWait
	lockWait = d
	return func() { lockWait = old }
}
