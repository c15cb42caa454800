package drivers

// Labels every container driver puts on what it creates, and the paths and host name
// its sandboxes see. Get/List/Watch find sandboxes by these labels, so a restarted
// gateway finds every container again, whichever engine runs it.
const (
	LabelManagedBy   = "openshell.ai/managed-by"
	ManagedByValue   = "openshell"
	LabelSandboxID   = "openshell.ai/sandbox-id"
	LabelSandboxName = "openshell.ai/sandbox-name"
	LabelImage       = "openshell.ai/image" // the image reference the user asked for
	LabelWorkspace   = "openshell.ai/workspace"

	// SupervisorPath is where a container driver bind-mounts the supervisor (read-only).
	SupervisorPath = "/opt/openshell/bin/openshell-sandbox"
	// BootstrapDir holds the per-sandbox token and CA bundle (read-only bind mount).
	BootstrapDir = "/etc/openshell/bootstrap"
	// GatewayHost is the name a sandbox uses to reach the gateway.
	GatewayHost = "host.openshell.internal"
)
