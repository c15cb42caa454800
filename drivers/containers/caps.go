package containers

// SupervisorCapabilities are the only capabilities a sandbox's supervisor keeps;
// every other one is dropped. It runs as root only to set the sandbox up and runs
// the agent as the image's user with none of them:
//   - CHOWN, FOWNER, DAC_OVERRIDE: make the image user's home and workdir and hand
//     /sandbox to that user, whoever owns the image's files.
//   - SETUID, SETGID: become the image's user (and its groups) for the agent.
//   - KILL: signal the agent's processes, which run under another uid.
//   - NET_ADMIN: install the agent's network rules (egress only through the proxy).
//   - SYS_ADMIN: make the agent's network namespace and mounts.
//   - SETPCAP: empty the agent's bounding set, so nothing it runs regains one.
//
// Every driver that starts the supervisor in a container grants exactly these.
var SupervisorCapabilities = []string{"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL", "NET_ADMIN", "SYS_ADMIN", "SETPCAP"}
