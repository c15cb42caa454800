package wire

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestTimelineAckRoundTrip(t *testing.T) {
	tl := GuestTimeline{NowNs: 1_500_000_000, Steps: []GuestStep{{"kernel", 900_000_000}, {"init", 1_200_000_000}, {"supervisor", 1_450_000_000}}}
	b, err := AppendTimelineAck(nil, tl)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte(BootstrapAckTimeline)) || len(BootstrapAckTimeline) != len(BootstrapAck) {
		t.Fatalf("ack %q: want the %d-byte %q first", b, len(BootstrapAck), BootstrapAckTimeline)
	}
	r := bytes.NewReader(append(b[len(BootstrapAckTimeline):], "next"...))
	got, err := ReadTimeline(r)
	if err != nil {
		t.Fatal(err)
	}
	if got.NowNs != tl.NowNs || len(got.Steps) != 3 || got.Steps[1] != tl.Steps[1] || r.Len() != 4 {
		t.Fatalf("read back %+v with %d bytes left; want %+v and the 4 after it", got, r.Len(), tl)
	}
	// Mapped onto the host: the kernel's zero 1.5 s before receipt, each step after it.
	recv := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	hs := got.HostTimes(recv)
	want := []struct {
		phase string
		at    time.Duration // after 00:00:08.5
	}{{"firmware", 0}, {"kernel", 900 * time.Millisecond}, {"init", 1200 * time.Millisecond}, {"supervisor", 1450 * time.Millisecond}}
	if len(hs) != len(want) {
		t.Fatalf("host steps %+v", hs)
	}
	zero := recv.Add(-1500 * time.Millisecond)
	for i, w := range want {
		if hs[i].Phase != w.phase || !hs[i].At.Equal(zero.Add(w.at)) {
			t.Errorf("step %d = %s at %v, want %s at %v", i, hs[i].Phase, hs[i].At, w.phase, zero.Add(w.at))
		}
	}
}

func TestTimelineRefused(t *testing.T) {
	for name, doc := range map[string]string{
		"not json":      `{`,
		"no now":        `{"steps":[]}`,
		"future step":   `{"now_ns":10,"steps":[{"phase":"kernel","ns":11}]}`,
		"negative step": `{"now_ns":10,"steps":[{"phase":"kernel","ns":-1}]}`,
		"bad name":      `{"now_ns":10,"steps":[{"phase":"Kernel!","ns":1}]}`,
		"empty name":    `{"now_ns":10,"steps":[{"phase":"","ns":1}]}`,
		"too many":      `{"now_ns":10,"steps":[` + strings.Repeat(`{"phase":"a","ns":1},`, 16) + `{"phase":"a","ns":1}]}`,
	} {
		if _, err := ParseTimeline([]byte(doc)); err == nil {
			t.Errorf("%s: %s accepted", name, doc)
		}
	}
	// A length beyond the bound is refused before anything is read.
	if _, err := ReadTimeline(bytes.NewReader([]byte{0xff, 0xff})); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("65535-byte announcement: %v", err)
	}
	if _, err := ReadTimeline(bytes.NewReader([]byte{0, 10, '{'})); err == nil {
		t.Error("short body accepted")
	}
}

// FuzzReadTimeline: what a guest sends after its acknowledgement never panics the
// host, and whatever is accepted respects the bounds.
func FuzzReadTimeline(f *testing.F) {
	ok, _ := AppendTimelineAck(nil, GuestTimeline{NowNs: 5, Steps: []GuestStep{{"kernel", 1}}})
	f.Add(ok[len(BootstrapAckTimeline):])
	f.Add([]byte{0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		tl, err := ReadTimeline(bytes.NewReader(b))
		if err != nil {
			return
		}
		if tl.NowNs <= 0 || len(tl.Steps) > maxGuestSteps {
			t.Fatalf("accepted %+v", tl)
		}
		for _, s := range tl.Steps {
			if s.Ns < 0 || s.Ns > tl.NowNs || !phaseName(s.Phase) {
				t.Fatalf("accepted step %+v of %+v", s, tl)
			}
		}
		_ = tl.HostTimes(time.Now())
	})
}
