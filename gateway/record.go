package gateway

import (
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/openshell/openshell/api/computev1"
	"github.com/openshell/openshell/api/openshellv1"
	"github.com/openshell/openshell/gateway/store"
)

// Store kinds the gateway writes.
const (
	kindSandbox    = "sandbox"
	kindSSHSession = "ssh_session"
)

// Gateway-imposed lifecycle intents (what the gateway asked the driver to do and has
// not yet seen completed). They override the driver-derived phase.
const (
	intentNone     = ""
	intentStopping = "stopping"
	intentStopped  = "stopped"
	intentStarting = "starting"
	intentDeleting = "deleting"
)

// record is what the gateway persists per sandbox: the public Sandbox plus the last
// driver observation and the gateway's own intent. The public phase is derived from
// these and the live session state every time it is read, so it is never stale after
// a restart or a lost session.
type record struct {
	obj     *store.Object
	sb      *openshellv1.Sandbox
	backend *computev1.DriverSandboxStatus
	intent  string
	// failure is a gateway-side terminal error (e.g. the driver refused the create):
	// reason and message end up on the Ready condition.
	failureReason, failureMessage string
	// policyVersion counts the sandbox's policy updates through UpdateConfig (0 in
	// records written before versions were kept, read as 1 by currentPolicyVersion);
	// policyError is the supervisor's last refusal.
	policyVersion uint32
	policyError   string
	// sessionAt, when set, is when the supervisor session that this write records was
	// accepted: the moment a create became Ready (finishTimeline). Not stored.
	sessionAt time.Time
}

// The stored payload is a small protobuf-encoded envelope (no .proto file: it is
// private to the gateway), written with protowire so decoding 1,000 records for a
// List stays cheap:
//
//	1: bytes  sandbox (openshell.v1.Sandbox)
//	2: bytes  backend (openshell.compute.v1.DriverSandboxStatus)
//	3: string intent
//	4: string failure_reason
//	5: string failure_message
//	6: string policy_version (decimal)
//	7: string policy_error
const (
	fieldSandbox protowire.Number = iota + 1
	fieldBackend
	fieldIntent
	fieldFailureReason
	fieldFailureMessage
	fieldPolicyVersion
	fieldPolicyError
)

func decodeRecord(o *store.Object) (*record, error) {
	r := &record{obj: o, sb: &openshellv1.Sandbox{}}
	b := o.Data
	var sbBytes, backendBytes []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			return nil, fmt.Errorf("sandbox %s: stored record is corrupt (tag): %w", o.ID, protowire.ParseError(n))
		}
		b = b[n:]
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return nil, fmt.Errorf("sandbox %s: stored record is corrupt: %w", o.ID, protowire.ParseError(m))
		}
		b = b[m:]
		switch num {
		case fieldSandbox:
			sbBytes = v
		case fieldBackend:
			backendBytes = v
		case fieldIntent:
			r.intent = string(v)
		case fieldFailureReason:
			r.failureReason = string(v)
		case fieldFailureMessage:
			r.failureMessage = string(v)
		case fieldPolicyVersion:
			n, err := strconv.ParseUint(string(v), 10, 32)
			if err != nil {
				return nil, fmt.Errorf("sandbox %s: stored policy version is corrupt: %w", o.ID, err)
			}
			r.policyVersion = uint32(n)
		case fieldPolicyError:
			r.policyError = string(v)
		}
	}
	if err := proto.Unmarshal(sbBytes, r.sb); err != nil {
		return nil, fmt.Errorf("sandbox %s: stored sandbox is corrupt: %w", o.ID, err)
	}
	if backendBytes != nil {
		r.backend = &computev1.DriverSandboxStatus{}
		if err := proto.Unmarshal(backendBytes, r.backend); err != nil {
			return nil, fmt.Errorf("sandbox %s: stored driver status is corrupt: %w", o.ID, err)
		}
	}
	return r, nil
}

func (r *record) encode() ([]byte, error) {
	sb, err := proto.Marshal(r.sb)
	if err != nil {
		return nil, err
	}
	b := protowire.AppendTag(nil, fieldSandbox, protowire.BytesType)
	b = protowire.AppendBytes(b, sb)
	if r.backend != nil {
		be, err := proto.Marshal(r.backend)
		if err != nil {
			return nil, err
		}
		b = protowire.AppendTag(b, fieldBackend, protowire.BytesType)
		b = protowire.AppendBytes(b, be)
	}
	for _, f := range []struct {
		num protowire.Number
		v   string
	}{{fieldIntent, r.intent}, {fieldFailureReason, r.failureReason}, {fieldFailureMessage, r.failureMessage},
		{fieldPolicyVersion, policyVersionString(r.policyVersion)}, {fieldPolicyError, r.policyError}} {
		if f.v != "" {
			b = protowire.AppendTag(b, f.num, protowire.BytesType)
			b = protowire.AppendString(b, f.v)
		}
	}
	return b, nil
}

func (r *record) id() string { return r.obj.ID }

func cloneSandbox(sb *openshellv1.Sandbox) *openshellv1.Sandbox {
	return proto.Clone(sb).(*openshellv1.Sandbox)
}

func policyVersionString(v uint32) string {
	if v == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(v), 10)
}

// currentPolicyVersion is the sandbox's policy version (1 until the first update).
func (r *record) currentPolicyVersion() uint32 { return max(r.policyVersion, 1) }
