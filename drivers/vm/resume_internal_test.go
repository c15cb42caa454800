package vm

import (
	"testing"

	"github.com/openshell/openshell/drivers/vm/internal/runner"
	"github.com/openshell/openshell/drivers/vm/internal/state"
)

// TestCutOffByReboot is the decision table for resuming a sandbox whose runner is gone.
func TestCutOffByReboot(t *testing.T) {
	const now, before = "boot-now", "boot-before"
	stopped := &state.Tombstone{Reason: runner.ReasonStopped, Message: "runner received terminated"}
	for _, tc := range []struct {
		name   string
		rec    state.Record
		ts     *state.Tombstone
		bootID string
		want   bool
	}{
		{"power loss", state.Record{BootID: before}, nil, now, true},
		{"runner SIGTERMed at shutdown", state.Record{BootID: before}, stopped, now, true},
		{"runner killed, no reboot", state.Record{BootID: now}, nil, now, false},
		{"runner SIGTERMed, no reboot", state.Record{BootID: now}, stopped, now, false},
		{"stopped by the user", state.Record{BootID: before, Stopped: true}, stopped, now, false},
		{"stopped by the user, tombstone lost", state.Record{BootID: before, Stopped: true}, nil, now, false},
		{"provisioning failed", state.Record{BootID: before, Error: &state.Tombstone{Reason: ReasonProvisioningFailed}}, nil, now, false},
		{"crashed before the reboot", state.Record{BootID: before}, &state.Tombstone{Reason: runner.ReasonVMExited}, now, false},
		{"boot failed before the reboot", state.Record{BootID: before}, &state.Tombstone{Reason: runner.ReasonBootFailed}, now, false},
		{"killed (delete) before the reboot", state.Record{BootID: before}, &state.Tombstone{Reason: runner.ReasonKilled}, now, false},
		{"record older than boot ids", state.Record{}, nil, now, false},
		{"current boot id unknown", state.Record{BootID: before}, nil, "", false},
		{"both unknown", state.Record{}, nil, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := cutOffByReboot(&tc.rec, tc.ts, tc.bootID); got != tc.want {
				t.Errorf("cutOffByReboot = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestHostRebooted(t *testing.T) {
	for _, tc := range []struct {
		recorded, current string
		want              bool
	}{
		{"a", "b", true},
		{"a", "a", false},
		{"", "a", false},
		{"a", "", false},
		{"", "", false},
	} {
		if got := hostRebooted(&state.Record{BootID: tc.recorded}, tc.current); got != tc.want {
			t.Errorf("hostRebooted(recorded %q, current %q) = %v, want %v", tc.recorded, tc.current, got, tc.want)
		}
	}
}

func TestResumeAfterHostRebootDefault(t *testing.T) {
	c := Config{StateDir: "/tmp/x", GatewayEndpoint: "127.0.0.1:1"}
	if !c.resumeAfterHostReboot() {
		t.Error("unset resume_after_host_reboot must mean on")
	}
	c = c.WithDefaults()
	if c.ResumeAfterHostReboot == nil || !*c.ResumeAfterHostReboot || c.BootID == nil {
		t.Errorf("WithDefaults: resume %v, boot id source set %v", c.ResumeAfterHostReboot, c.BootID != nil)
	}
	off := false
	c = Config{ResumeAfterHostReboot: &off}.WithDefaults()
	if c.resumeAfterHostReboot() || *c.ResumeAfterHostReboot {
		t.Error("WithDefaults turned an explicit false on")
	}
}
