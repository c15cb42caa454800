// Package instancemd names the call metadata a supervisor sends besides its hello to
// identify its instance (the wire messages stay as upstream defines them:
// SupervisorHello carries only the sandbox and instance ids). The supervisor's
// session client sends these keys and the gateway's session hub reads them; this
// package imports nothing so that both sides can share it without the supervisor
// depending on the gateway or the other way round.
package instancemd

const (
	// InstanceID names the supervisor instance on calls that carry no instance id
	// of their own (RelayStream, PushSandboxLogs).
	InstanceID = "x-openshell-instance-id"
	// InstanceSecret is the per-boot instance secret (hex), on every call.
	InstanceSecret = "x-openshell-instance-secret"
	// HostKey is the supervisor's SSH host public key (SSH wire format, standard
	// base64), on ConnectSupervisor.
	HostKey = "x-openshell-ssh-host-key"
)
