// Package timeline reads a sandbox's create timeline out of `openshell sandbox get -o
// json` for the end-to-end tests and benches.
package timeline

import (
	"encoding/json"
	"fmt"
)

// Step is one step of a create timeline, in microseconds: its end on the host's clock
// (At) and its length (Took).
type Step struct {
	Phase string `json:"phase"`
	At    int64  `json:"at_unix_us,string"`
	Took  int64  `json:"took_us,string"`
}

// Parse returns the create timeline of a `sandbox get -o json` document (none when
// the sandbox has none yet).
func Parse(doc []byte) ([]Step, error) {
	var v struct {
		Status struct {
			Timeline []Step `json:"create_timeline"`
		} `json:"status"`
	}
	if err := json.Unmarshal(doc, &v); err != nil {
		return nil, fmt.Errorf("read the create timeline of sandbox get -o json: %w", err)
	}
	return v.Status.Timeline, nil
}
