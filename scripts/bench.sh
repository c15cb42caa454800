#!/usr/bin/env bash
# Performance targets live here, not in timed unit tests. Each section runs a feature
# and its baseline side by side in one run and prints the ratio (the Go benchmarks
# report p50/p99 and ratios through b.ReportMetric / t.Logf):
#   gateway  GetSandbox p50/p99 and ListSandboxes(1,000) over gRPC+mTLS (targets: p99 < 5 ms, < 50 ms)
#   store    Get/List on 1,000 objects, SQLite and PostgreSQL
#   vmm      QEMU start → guest answers over vsock vs a bare boot to a trivial /init (target ≤ 1.3×)
#   images   image → ext4 for ~100 MiB; second Ensure of a cached image (target < 100 ms)
#   vm       VM create → Ready, sequential and 4 at a time, vs bare QEMU; memory per idle VM
#   coldpath cold VM create → Ready through the CLI, 10 sequential, alternating with 10 bare
#            boots of the same kernel to a trivial init that powers off (target ≤ 1.5×);
#            the median create's timeline
#   docker   Docker create → Ready vs `docker run -d … sleep infinity` (target ≤ 1.5×)
#   podman   Podman create → Ready vs `podman run -d … sleep infinity`, rootful and rootless
#            (target ≤ 1.5×)
#   kubernetes  10 sandboxes at once: create → Ready vs a bare pod of the same image → Running
#            on the test cluster's node (target ≤ 1.5×)
#   exec     `sandbox exec -- true` vs `docker exec`, interleaved (target ≤ 0.5×), and where
#            the exec's time goes (CLI start, one call, ExecSandbox alone, in the sandbox);
#            upload 256 MiB vs `docker cp`; VM driver: `sandbox exec -- true` vs a bare
#            vsock round trip to a guest of the driver plus a /bin/true start in it
#            (target ≤ 1.2×), with the same breakdown
#   transfer sandbox upload/download (tar stream): Docker driver 256 MiB in one file and
#            10,000 small files vs `docker cp` (target ratio ≤ 1); VM driver 256 MiB in MiB/s
#            (target ≥ 45 MiB/s under TCG); each the median of 3 runs (OPENSHELL_BENCH_RUNS);
#            on Docker first where one 256 MiB upload's CPU goes (client, gateway or dockerd,
#            container); then the VM's bare vsock channel each way, the ceiling of the VM figures
#   egress   1 GiB through the proxy vs direct (target ≥ 0.8×); CONNECT added latency
#   snapshot VM suspend → resume (CLI, until READY) vs a cold create → READY of the same
#            sandbox with its image cached (target resume ≤ 0.3× cold); suspended RSS;
#            then create --from-snapshot → READY vs a cold create (target ≤ 0.3×)
#   pools    VM create → READY through the CLI from a warm pool of 5 vs a cold create of
#            another shape, 20 sequential and 5 at a time; the same creates as the gateway
#            timed them (received → ready, no CLI); each pooled sample's guest start-up
#            steps; idle pooled VMs' host RSS (target: pool p50 < 150 ms)
#   cliapi   a CLI's calls over the local Unix socket vs TCP+mTLS: small RPC p50,
#            connect + first RPC p50, and `sandbox exec -- true` p50 on Docker
#            (target: the socket no slower)
# Usage: scripts/bench.sh [section…]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(gateway store vmm images vm docker podman exec egress cliapi)
step() { printf '\n==> bench %s (%s)\n' "$*" "$(date +%T)"; }
needs_docker() { ./scripts/setup-docker.sh >/dev/null; }
# vm_exec prints `sandbox exec -- true` on a VM sandbox against its floor: the two
# tests each print a "BENCH <name> p50_us=… p99_us=…" line; the ratio is computed here.
vm_exec() {
	local out base osh
	out=$(mktemp -d)
	OPENSHELL_BENCH=1 go test -count=1 -run TestBenchExecBaseline -v -timeout 20m ./drivers/vm | tee "$out/base"
	OPENSHELL_BENCH=1 E2E_DRIVER=vm go test -count=1 -run TestBenchVMExec -v -timeout 20m ./e2e/ | tee "$out/osh"
	base=$(grep -h '^BENCH vm-exec-baseline' "$out/base" || true)
	osh=$(grep -h '^BENCH vm-exec-openshell' "$out/osh" || true)
	rm -rf "$out"
	[ -n "$base" ] && [ -n "$osh" ] || { echo "vm exec: a half did not report (see above)" >&2; return 1; }
	printf '%s\n%s\n' "$base" "$osh" | awk '
		{ for (i = 3; i <= NF; i++) { split($i, kv, "="); v[$2, kv[1]] = kv[2] } }
		END {
			b50 = v["vm-exec-baseline", "p50_us"]; b99 = v["vm-exec-baseline", "p99_us"]
			o50 = v["vm-exec-openshell", "p50_us"]; o99 = v["vm-exec-openshell", "p99_us"]
			printf "vm exec true: openshell p50=%.1fms p99=%.1fms | vsock round trip + /bin/true p50=%.1fms p99=%.1fms | ratio p50=%.2f p99=%.2f (target ≤ 1.2)\n",
				o50/1000, o99/1000, b50/1000, b99/1000, o50/b50, o99/b99
		}'
}

# coldpath prints a cold VM create through the CLI against a bare boot of the same
# kernel: the e2e test runs both, alternating sample by sample (a drifting host weighs
# on both alike), and prints a "BENCH <name> p50_us=… p99_us=…" line for each; the
# ratio is computed here. Both halves boot the same VM shape (the VM driver's default
# sandbox: 2 vCPUs, 2 GiB), so the ratio compares like with like.
coldpath() {
	local out
	out=$(mktemp -d)
	export OPENSHELL_BENCH_VCPUS=2 OPENSHELL_BENCH_MEMORY_MIB=2048
	OPENSHELL_BENCH=1 E2E_DRIVER=vm go test -count=1 -run TestBenchColdCreate -v -timeout 60m ./e2e/ | tee "$out/cold"
	{ grep -h '^BENCH vm-bare-boot' "$out/cold"; grep -h '^BENCH vm-cold-create' "$out/cold"; } >"$out/lines" || true
	rm -f "$out/cold"
	[ "$(wc -l <"$out/lines")" -eq 2 ] || { echo "coldpath: a half did not report (see above)" >&2; rm -rf "$out"; return 1; }
	awk '
		{ for (i = 3; i <= NF; i++) { split($i, kv, "="); v[$2, kv[1]] = kv[2] } }
		END {
			b50 = v["vm-bare-boot", "p50_us"]; b99 = v["vm-bare-boot", "p99_us"]
			c50 = v["vm-cold-create", "p50_us"]; c99 = v["vm-cold-create", "p99_us"]
			printf "vm cold create → Ready (CLI): p50=%.0fms p99=%.0fms | bare boot (same shape) to a trivial init: p50=%.0fms p99=%.0fms | ratio p50=%.2f p99=%.2f (target ≤ 1.5)\n",
				c50/1000, c99/1000, b50/1000, b99/1000, c50/b50, c99/b99
		}' "$out/lines"
	rm -rf "$out"
}

for s in "${sections[@]}"; do
	step "$s"
	case "$s" in
	gateway) go test -run '^$' -bench 'BenchmarkGetSandbox|BenchmarkListSandboxes' -benchtime 2000x ./gateway/ ;;
	store) go test -run '^$' -bench . ./gateway/store/sqlite/ ./gateway/store/postgres/ ;;
	vmm) ./scripts/setup-vm-host.sh >/dev/null; go test -run '^$' -bench 'Boot' -benchtime 10x -timeout 30m ./vmm/qemu/ ;;
	images) go test -run '^$' -bench . -benchtime 3x ./images ;;
	vm) ./scripts/setup-vm-host.sh >/dev/null; OPENSHELL_BENCH=1 go test -count=1 -run TestBenchCreateReady -v -timeout 40m ./drivers/vm ;;
	coldpath) ./scripts/setup-vm-host.sh >/dev/null; needs_docker; coldpath ;;
	docker) needs_docker; OPENSHELL_BENCH=1 go test -count=1 -run TestBenchCreateToReady -v -timeout 20m ./drivers/docker ;;
	podman) ./scripts/setup-podman.sh >/dev/null; OPENSHELL_BENCH=1 go test -count=1 -run TestBenchCreateToReady -v -timeout 20m ./drivers/podman ;;
	kubernetes) ./scripts/setup-kubernetes.sh >/dev/null; OPENSHELL_BENCH=1 go test -count=1 -run TestBenchCreateToReady -v -timeout 20m ./drivers/kubernetes ;;
	exec) needs_docker; OPENSHELL_BENCH=1 go test -count=1 -run 'TestBenchDockerExec|TestBenchVsDocker' -v -timeout 30m ./e2e/
		./scripts/setup-vm-host.sh >/dev/null; vm_exec ;;
	transfer)
		needs_docker; OPENSHELL_BENCH=1 E2E_DRIVER=docker go test -count=1 -run TestTransferSpeed -v -timeout 30m ./e2e/
		./scripts/setup-vm-host.sh >/dev/null; OPENSHELL_BENCH=1 E2E_DRIVER=vm go test -count=1 -run TestTransferSpeed -v -timeout 30m ./e2e/
		# The VM's bare vsock channel, the ceiling under the VM figures above.
		OPENSHELL_BENCH=1 go test -count=1 -run TestBenchTransferChannel -v -timeout 15m ./drivers/vm/ | grep -E '^(BENCH|---|ok|FAIL)' ;;
	egress) go test -run '^$' -bench . -benchtime 3x ./supervisor/egress ;;
	snapshot) ./scripts/setup-vm-host.sh >/dev/null; needs_docker
		E2E_DRIVER=vm go test -count=1 -run 'TestVMSuspendResume|TestVMSnapshotCopies' -v -timeout 30m ./e2e/ | tee /dev/stderr | grep '^BENCH snapshot' ;;
	pools) ./scripts/setup-vm-host.sh >/dev/null; OPENSHELL_BENCH=1 go test -count=1 -run TestBenchPool -v -timeout 60m ./e2e/vm/ ;;
	cliapi) OPENSHELL_BENCH=1 go test -count=1 -run TestBenchCLIAPI -v -timeout 5m ./gateway/daemon/
		needs_docker; OPENSHELL_BENCH=1 go test -count=1 -run TestSocketVsTCPExecTiming -v -timeout 10m ./e2e/ ;;
	*) echo "unknown section $s; valid: gateway store vmm images vm coldpath docker podman exec transfer egress cliapi pools" >&2; exit 2 ;;
	esac
done
