package vm_test

import (
	"strings"
	"time"
)

// checkGuestClock compares the guest's clock with the host's in sandbox name's first
// session: the runner stamps the create timeline's "bootstrap" step (host clock) when
// the guest acknowledged its document, and the guest's supervisor logs "gateway
// session accepted" (guest clock) after it, before or shortly after the gateway logs
// "supervisor connected" (host clock, once the session is recorded). With the guest's
// clock set to the host's with the bootstrap's confirmation, its line falls between
// the two (the guest is behind by the confirmation's way to it, which its session's
// start-up more than makes up). A guest kernel's clock starts from the VM's real-time
// clock in whole seconds, up to a second behind (a pooled VM's long before its claim):
// before it was set, the line came 500-650 ms before the bootstrap step. The guest's
// line saying that it set its clock is in the sandbox's logs too, in between.
func (e *env) checkGuestClock(name string) {
	e.t.Helper()
	tl := e.timeline(name)
	var bootstrapped time.Time
	for _, st := range tl {
		if st.Phase == "bootstrap" {
			bootstrapped = time.UnixMicro(st.At)
		}
	}
	stamp := func(line string) time.Time {
		f, _, _ := strings.Cut(line, " ")
		t, _ := time.Parse(time.RFC3339Nano, f)
		return t
	}
	var logs string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		logs = e.cli("sandbox", "logs", name)
		if strings.Contains(logs, "gateway session accepted") {
			break
		}
	}
	var connected, accepted, stepped time.Time
	for _, line := range strings.Split(logs, "\n") {
		switch {
		case strings.Contains(line, "sandbox/openshell-sandbox: clock set to the host's") && stepped.IsZero():
			stepped = stamp(line)
		case strings.Contains(line, "gateway/gateway: supervisor connected") && connected.IsZero():
			connected = stamp(line)
		case strings.Contains(line, "sandbox/openshell-sandbox: gateway session accepted") && accepted.IsZero():
			accepted = stamp(line)
		}
	}
	if bootstrapped.IsZero() || connected.IsZero() || accepted.IsZero() {
		e.t.Fatalf("%s: no bootstrap step in its create timeline %+v, or its logs lack the gateway's or the guest's session line:\n%s", name, tl, logs)
	}
	e.t.Logf("%s: the guest stamps its session accepted %v after the host's bootstrap step, %v after the gateway logged its supervisor connected",
		name, accepted.Sub(bootstrapped), accepted.Sub(connected))
	// Slack for the runner's two readings of its clock (the one sent, the step's).
	const slack = 20 * time.Millisecond
	// The step itself is logged before the supervisor's run has its log shipper, and
	// reaches the sandbox's logs all the same, stamped after the clock was set.
	if stepped.IsZero() || stepped.Before(bootstrapped.Add(-slack)) || stepped.After(accepted) {
		e.t.Errorf("%s: the guest's \"clock set to the host's\" line is missing from its logs or stamped %s, outside the bootstrap step at %s and its session accepted at %s:\n%s",
			name, stepped.Format(time.StampMilli), bootstrapped.Format(time.StampMilli), accepted.Format(time.StampMilli), logs)
	}
	if accepted.Before(bootstrapped.Add(-slack)) || accepted.After(connected.Add(time.Second)) {
		e.t.Errorf("%s: the guest's clock stamps its session accepted at %s, outside the host's bootstrap step at %s and its supervisor connected at %s (+1 s): the clocks disagree",
			name, accepted.Format(time.StampMilli), bootstrapped.Format(time.StampMilli), connected.Format(time.StampMilli))
	}
}
