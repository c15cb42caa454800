package containers

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Locks serialises the create and delete of one sandbox id.
type Locks struct{ m sync.Map } // sandbox id → *sync.Mutex

// Lock takes id's lock and returns its unlock.
func (l *Locks) Lock(id string) (unlock func()) {
	m, _ := l.m.LoadOrStore(id, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// Forget drops id's lock once its sandbox is gone.
func (l *Locks) Forget(id string) { l.m.Delete(id) }

// SetStopped writes (stopped) or removes the stop marker in sandbox id's state dir,
// which records that the driver asked for the container's exit, so it is not taken
// for a crash (also after a gateway restart). dirPerm is the state dir's mode when
// it has to be made.
func SetStopped(dir, id string, stopped bool, dirPerm os.FileMode) error {
	p := filepath.Join(dir, "stopped")
	if !stopped {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("sandbox %s: clear stop marker: %w", id, err)
		}
		return nil
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return fmt.Errorf("sandbox %s: stop marker: %w", id, err)
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return fmt.Errorf("sandbox %s: stop marker: %w", id, err)
	}
	return nil
}

// IsStopped reports whether the state dir holds a stop marker.
func IsStopped(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "stopped"))
	return err == nil
}
