//go:build !linux || !(amd64 || arm64)

package confine

import "errors"

// ErrNotSupported is returned where confinement is not implemented.
var ErrNotSupported = errors.New("confine: not supported on this platform (Linux amd64/arm64 only)")

// Apply is not supported here.
func Apply(Spec) (Result, error) { return Result{}, ErrNotSupported }

// CheckLandlock reports no Landlock here; with hard set that is an error.
func CheckLandlock(hard bool) (int, error) {
	if hard {
		return 0, errors.New("confine: Landlock is required (landlock.compatibility: hard_requirement) but this platform has no Landlock: run on Linux, or set landlock.compatibility: best_effort")
	}
	return 0, nil
}

// preparedRuleset is a Landlock ruleset built ahead; there is none here.
type preparedRuleset struct{}

func applyForExec(s Spec, _ *preparedRuleset) (Result, error) { return Apply(s) }
