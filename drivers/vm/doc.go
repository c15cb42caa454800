// Package vm is the VM compute driver: each sandbox is a microVM (QEMU today) booted
// from the sandbox's OCI image, run by its own runner process that outlives the driver.
// The driver process (cmd/openshell-driver-vm) serves the compute contract to the
// gateway over a private Unix socket, peer-checked by uid and pid (SO_PEERCRED on
// Linux, LOCAL_PEERCRED and LOCAL_PEERPID on macOS; see peercred).
//
// On disk, under Config.StateDir:
//
//	images/            image cache (images.Cache): one read-only ext4 per image digest
//	initramfs/         initramfs cache (supervisor as /init + guest modules)
//	sb/<hash of id>/   one directory per sandbox, owned by its runner while it runs:
//	  state.json       state.Record: id, name, spec digest, runner/QEMU pid + start time,
//	                   host boot id the runner was started in
//	  state.lock       flock serialising state.json updates
//	  runner.json      runner.Spec: what to boot, the bootstrap config (0600: token)
//	  disk.img         the sparse writable ext4 disk (vdb), kept across stop/start
//	  console.log      the guest console
//	  runner.log       the runner's own log
//	  ctl.sock         the runner's control API (HTTP: GET /status, GET /watch,
//	                   POST /stop, POST /kill, POST /gateway)
//	  tombstone.json   why the VM ended (reason, message, time, console tail)
//	  v/               VMM sockets: QMP, vhost-user vsock and its per-port sockets
//
// Lifecycle: Create records the sandbox and returns; the image, writable disk and
// initramfs are prepared in the background, then a runner is spawned
// (`openshell-driver-vm runner --state-dir sb/<dir>`, its own session). The runner boots
// QEMU, serves the guest channel ports (bootstrap config, gateway bridge, egress relay)
// and reports "running" once the guest fetched its bootstrap config: the driver then
// reports Ready=True. The bootstrap config is served once per boot, to the supervisor
// before any agent runs, with a fresh instance secret; the port then closes, and the
// gateway and egress ports admit only connections that open with that secret. The
// gateway bridge leads to the sandbox's own gateway socket (gateway_socket_dir in the
// spec) and the guest speaks plaintext gRPC over it: no TLS inside the guest, the
// socket tells the gateway which sandbox it is, and the token is still checked. Only a
// sandbox the gateway gave no socket dir (a runner booted before it did) is bridged
// to the gateway's TCP address, with TLS from the guest.
// Stop shuts the guest down (ACPI power button) and the runner exits
// with a "Stopped" tombstone (Suspended=True); Start spawns a new runner on the same
// disk. A VM that ends unasked is Ready=False reason VMExited with the console tail.
// Delete kills the runner's whole session and removes the directory (never following
// symlinks). A restarted driver re-adopts live runners from state.json (pid + start
// time) and reports ended ones from their tombstones.
//
// Host reboots: state.json records the host's boot id
// (/proc/sys/kernel/random/boot_id) each time a runner is started. A driver that finds
// a sandbox whose runner is gone, that the user did not stop, that never failed to
// provision, whose VM did not end on its own (no tombstone, or a Stopped one from the
// runner's SIGTERM at shutdown) and whose boot id differs from the current one, knows
// the host went down under it: it starts the sandbox again in the background through
// the same path as Start (Ready=False Starting "host restarted since the VM last ran;
// starting it again", then Running), on the same writable disk, so /sandbox is kept.
// Config.ResumeAfterHostReboot (resume_after_host_reboot, default true) turns this off:
// such sandboxes are then Ready=False VMExited until started by hand. A runner killed
// without a reboot (same boot id) stays VMExited as before, and records written before
// the boot id existed are treated the same way. Pids recorded in an earlier boot are
// never signalled.
package vm
