package gateway

import (
	"encoding/json"
	"fmt"

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
}

type envelope struct {
	Sandbox        []byte `json:"sandbox"`
	Backend        []byte `json:"backend,omitempty"`
	Intent         string `json:"intent,omitempty"`
	FailureReason  string `json:"failure_reason,omitempty"`
	FailureMessage string `json:"failure_message,omitempty"`
}

func decodeRecord(o *store.Object) (*record, error) {
	var env envelope
	if err := json.Unmarshal(o.Data, &env); err != nil {
		return nil, fmt.Errorf("sandbox %s: stored record is corrupt: %w", o.ID, err)
	}
	r := &record{obj: o, sb: &openshellv1.Sandbox{}, intent: env.Intent,
		failureReason: env.FailureReason, failureMessage: env.FailureMessage}
	if err := proto.Unmarshal(env.Sandbox, r.sb); err != nil {
		return nil, fmt.Errorf("sandbox %s: stored sandbox is corrupt: %w", o.ID, err)
	}
	if len(env.Backend) > 0 {
		r.backend = &computev1.DriverSandboxStatus{}
		if err := proto.Unmarshal(env.Backend, r.backend); err != nil {
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
	env := envelope{Sandbox: sb, Intent: r.intent, FailureReason: r.failureReason, FailureMessage: r.failureMessage}
	if r.backend != nil {
		if env.Backend, err = proto.Marshal(r.backend); err != nil {
			return nil, err
		}
	}
	return json.Marshal(env)
}

func (r *record) id() string { return r.obj.ID }

func cloneSandbox(sb *openshellv1.Sandbox) *openshellv1.Sandbox {
	return proto.Clone(sb).(*openshellv1.Sandbox)
}
