package runner

import (
	"encoding/json"
	"testing"
)

// FuzzStatusJSON: the driver reads runner status from a runner of this or an
// earlier version (qemu_pid); any input decodes or errors, never panics, and a
// legacy pid is only used when the current field is absent.
func FuzzStatusJSON(f *testing.F) {
	f.Add([]byte(`{"state":"running","runner_pid":5,"vmm_pid":7}`))
	f.Add([]byte(`{"state":"running","runner_pid":5,"qemu_pid":7}`))
	f.Add([]byte(`{"vmm_pid":7,"qemu_pid":9}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s Status
		if err := json.Unmarshal(b, &s); err != nil {
			return
		}
		var raw struct {
			VMM    *int `json:"vmm_pid"`
			Legacy *int `json:"qemu_pid"`
		}
		if json.Unmarshal(b, &raw) == nil && raw.VMM != nil && *raw.VMM != 0 && s.VMMPID != *raw.VMM {
			t.Fatalf("vmm_pid %d decoded as %d", *raw.VMM, s.VMMPID)
		}
	})
}

func TestStatusReadsLegacyPID(t *testing.T) {
	var s Status
	if err := json.Unmarshal([]byte(`{"state":"running","runner_pid":5,"qemu_pid":7}`), &s); err != nil || s.VMMPID != 7 || s.RunnerPID != 5 || s.State != "running" {
		t.Fatalf("legacy status: %+v %v", s, err)
	}
	b, _ := json.Marshal(s)
	if string(b) == "" || json.Valid(b) == false {
		t.Fatal("marshal")
	}
	var again Status
	if err := json.Unmarshal(b, &again); err != nil || again.VMMPID != 7 {
		t.Fatalf("round trip %s: %+v %v", b, again, err)
	}
}
