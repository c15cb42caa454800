package wire

// The guest's boot timeline rides on the bootstrap acknowledgement: instead of
// BootstrapAck a guest that has stamps sends BootstrapAckTimeline, a 2-byte
// big-endian length and a JSON GuestTimeline. The times are the guest's
// CLOCK_BOOTTIME (zero when its kernel started keeping time); the host maps them onto
// its own clock with NowNs, read just before sending, against the moment it received
// them (the channel's latency, well under a millisecond, is the error).

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// BootstrapAckTimeline acknowledges the bootstrap document and announces a timeline.
const BootstrapAckTimeline = "OSB1-ACT"

// MaxTimelineLen bounds the encoded timeline a host reads.
const MaxTimelineLen = 2048

// maxGuestSteps bounds the steps of one timeline.
const maxGuestSteps = 16

// GuestStep is one guest-side step: its name and when it ended (guest boot time).
type GuestStep struct {
	Phase string `json:"phase"`
	Ns    int64  `json:"ns"`
}

// GuestTimeline is what the guest reports with its acknowledgement.
type GuestTimeline struct {
	NowNs int64       `json:"now_ns"` // guest boot time when it was sent
	Steps []GuestStep `json:"steps"`
}

// AppendTimelineAck appends BootstrapAckTimeline and the encoded tl to b.
func AppendTimelineAck(b []byte, tl GuestTimeline) ([]byte, error) {
	doc, err := json.Marshal(tl)
	if err != nil {
		return b, err
	}
	if len(doc) > MaxTimelineLen {
		return b, fmt.Errorf("guest timeline: %d bytes encoded, at most %d", len(doc), MaxTimelineLen)
	}
	b = append(b, BootstrapAckTimeline...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(doc)))
	return append(b, doc...), nil
}

// ReadTimeline reads what follows BootstrapAckTimeline on r and checks it.
func ReadTimeline(r io.Reader) (GuestTimeline, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return GuestTimeline{}, fmt.Errorf("guest timeline: read its length: %w", err)
	}
	l := int(binary.BigEndian.Uint16(n[:]))
	if l > MaxTimelineLen {
		return GuestTimeline{}, fmt.Errorf("guest timeline: %d bytes announced, at most %d", l, MaxTimelineLen)
	}
	doc := make([]byte, l)
	if _, err := io.ReadFull(r, doc); err != nil {
		return GuestTimeline{}, fmt.Errorf("guest timeline: read %d bytes: %w", l, err)
	}
	return ParseTimeline(doc)
}

// ParseTimeline decodes and checks an encoded timeline: at most 16 steps, each named
// by 1-16 lower-case letters, none later than NowNs or before zero.
func ParseTimeline(doc []byte) (GuestTimeline, error) {
	var tl GuestTimeline
	if err := json.Unmarshal(doc, &tl); err != nil {
		return GuestTimeline{}, fmt.Errorf("guest timeline: %w", err)
	}
	if tl.NowNs <= 0 {
		return GuestTimeline{}, fmt.Errorf("guest timeline: now_ns %d is not a boot time", tl.NowNs)
	}
	if len(tl.Steps) > maxGuestSteps {
		return GuestTimeline{}, fmt.Errorf("guest timeline: %d steps, at most %d", len(tl.Steps), maxGuestSteps)
	}
	for i, s := range tl.Steps {
		if !phaseName(s.Phase) {
			return GuestTimeline{}, fmt.Errorf("guest timeline: steps[%d].phase %q: want 1-16 lower-case letters", i, s.Phase)
		}
		if s.Ns < 0 || s.Ns > tl.NowNs {
			return GuestTimeline{}, fmt.Errorf("guest timeline: steps[%d] (%s) at %d ns, outside 0..now_ns %d", i, s.Phase, s.Ns, tl.NowNs)
		}
	}
	return tl, nil
}

func phaseName(s string) bool {
	if len(s) == 0 || len(s) > 16 {
		return false
	}
	for _, c := range []byte(s) {
		if c < 'a' || c > 'z' {
			return false
		}
	}
	return true
}

// HostTimes maps the guest's steps onto the host clock, given when the host
// received the timeline. The guest kernel's zero comes first, as "firmware" (what ran
// before the kernel kept time: the VMM's set-up and the kernel's early boot).
func (tl GuestTimeline) HostTimes(received time.Time) []HostStep {
	zero := received.Add(-time.Duration(tl.NowNs))
	out := make([]HostStep, 0, len(tl.Steps)+1)
	out = append(out, HostStep{Phase: "firmware", At: zero})
	for _, s := range tl.Steps {
		out = append(out, HostStep{Phase: s.Phase, At: zero.Add(time.Duration(s.Ns))})
	}
	return out
}

// HostStep is a step on the host clock.
type HostStep struct {
	Phase string    `json:"phase"`
	At    time.Time `json:"at"`
}
