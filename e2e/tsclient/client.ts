// A second-language client for the openshell gateway: @grpc/grpc-js with the
// service and messages loaded from the project's own .proto files (api/proto), and
// TypeScript types generated from the same files (proto-loader-gen-types into
// generated/, see the Go test), so a request field this client names wrongly fails
// to compile and a wire mistake in the Go code shows up as a mismatch here. It runs the workflow an
// SDK user would: create a sandbox with a provider, run a command, change the policy
// and wait for the supervisor to load it, then delete everything. It prints one JSON
// object with what it saw; e2e/tsclient_test.go asserts on it.
//
// Environment: OPENSHELL_ENDPOINT (host:port), OPENSHELL_CA, OPENSHELL_CERT,
// OPENSHELL_KEY (PEM files of the CLI's mTLS configuration), SANDBOX, PROVIDER, IMAGE.
import * as fs from "fs";
import * as path from "path";
import * as grpc from "@grpc/grpc-js";
import * as loader from "@grpc/proto-loader";
import type { ProtoGrpcType } from "./generated/openshell";
import type { OpenShellClient } from "./generated/openshell/v1/OpenShell";
import type { ExecSandboxEvent__Output } from "./generated/openshell/v1/ExecSandboxEvent";
import type { Sandbox__Output } from "./generated/openshell/v1/Sandbox";

function env(name: string): string {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set`);
  }
  return v;
}

const protoDir = path.resolve(__dirname, "..", "..", "..", "api", "proto");
const def = loader.loadSync(path.join(protoDir, "openshell.proto"), {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [protoDir, process.env.PROTO_INCLUDE || "/usr/include"],
});
const pkg = grpc.loadPackageDefinition(def) as unknown as ProtoGrpcType;

const creds = grpc.credentials.createSsl(
  fs.readFileSync(env("OPENSHELL_CA")),
  fs.readFileSync(env("OPENSHELL_KEY")),
  fs.readFileSync(env("OPENSHELL_CERT")),
);
const client: OpenShellClient = new pkg.openshell.v1.OpenShell(env("OPENSHELL_ENDPOINT"), creds);

// Request and response types of a unary method, from its generated signatures (the
// last overload is (argument, callback)).
type Unary<F> = F extends (argument: infer Q, callback: grpc.requestCallback<infer R>) => grpc.ClientUnaryCall ? [Q, R] : never;

// unary runs one call with a deadline; request and response are typed from the
// generated client, so a misnamed request field does not compile.
function unary<K extends keyof OpenShellClient>(
  method: K,
  req: Unary<OpenShellClient[K]>[0],
  timeoutMs = 30000,
): Promise<Unary<OpenShellClient[K]>[1]> {
  const fn = (client[method] as unknown as Function).bind(client);
  return new Promise((resolve, reject) => {
    fn(req, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, resp?: Unary<OpenShellClient[K]>[1]) => {
      if (err) {
        reject(new Error(`${String(method)}: ${grpc.status[err.code]}: ${err.details}`));
      } else if (resp === undefined) {
        reject(new Error(`${String(method)}: no response`));
      } else {
        resolve(resp);
      }
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) {
        return v;
      }
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) {
      throw new Error(`${what}: not within ${timeoutMs} ms (last error: ${last})`);
    }
    await sleep(500);
  }
}

function exec(sandboxId: string, command: string[]): Promise<{ stdout: string; stderr: string; exit_code: number }> {
  return new Promise((resolve, reject) => {
    const out: Buffer[] = [];
    const errb: Buffer[] = [];
    let code: number | undefined;
    const stream = client.ExecSandbox({ sandbox_id: sandboxId, command, timeout_seconds: 60 }, { deadline: Date.now() + 90000 });
    stream.on("data", (ev: ExecSandboxEvent__Output) => {
      if (ev.payload === "stdout" && ev.stdout) out.push(Buffer.from(ev.stdout.data));
      if (ev.payload === "stderr" && ev.stderr) errb.push(Buffer.from(ev.stderr.data));
      if (ev.payload === "exit" && ev.exit) code = ev.exit.exit_code;
    });
    stream.on("error", (e: grpc.ServiceError) => reject(new Error(`ExecSandbox: ${grpc.status[e.code]}: ${e.details}`)));
    stream.on("end", () => {
      if (code === undefined) {
        reject(new Error("ExecSandbox: the stream ended without an exit event"));
      } else {
        resolve({ stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(errb).toString(), exit_code: code });
      }
    });
  });
}

async function main(): Promise<void> {
  const name = env("SANDBOX");
  const provider = env("PROVIDER");
  const result: Record<string, unknown> = {};

  const health = await unary("Health", {});
  result.health = health.status;
  // Read before create, as upstream's CLI does.
  const cfg = await unary("GetGatewayConfig", {});
  result.gateway_settings = Object.keys(cfg.settings).length;
  const info = await unary("GetGatewayInfo", {});
  result.drivers = info.compute_drivers.map((d) => d.name);

  const created = await unary("CreateProvider", {
    provider: {
      metadata: { name: provider },
      type: "generic",
      credentials: { TS_TOKEN: "ts-secret-value-9d2f" },
      config: { hosts: "api.example.com" },
    },
  });
  result.provider_credentials = created.provider?.credentials;

  const sb = await unary("CreateSandbox", { name, spec: { template: { image: env("IMAGE") }, providers: [provider] } }, 60000);
  const id = sb.sandbox?.metadata?.id ?? "";
  result.sandbox_id = id;
  const ready: Sandbox__Output = await until("sandbox READY", 120000, async () => {
    const got = await unary("GetSandbox", { name });
    const phase = got.sandbox?.status?.phase;
    if (phase === "SANDBOX_PHASE_ERROR") {
      throw new Error(`sandbox ${name} is in ERROR: ${JSON.stringify(got.sandbox?.status?.conditions)}`);
    }
    return phase === "SANDBOX_PHASE_READY" && got.sandbox ? got.sandbox : undefined;
  });
  result.phase = ready.status?.phase;

  const ex = await exec(id, ["sh", "-c", 'echo "hello from typescript"; printf "%s" "$TS_TOKEN" | cut -d: -f1-3']);
  result.exec = ex;
  if (!ex.stdout.includes("openshell-placeholder:")) {
    // No placeholder: the sandbox's own log (the supervisor's credential fetch) says
    // why; kept for the test's report.
    try {
      const logs = await unary("GetSandboxLogs", { sandbox_id: id, lines: 200 });
      result.sandbox_logs = logs.logs.map((l) => `${l.source} ${l.level} ${l.target}: ${l.message} ${JSON.stringify(l.fields)}`);
    } catch (e) {
      result.sandbox_logs = [String(e)];
    }
  }

  const attached = await unary("ListSandboxProviders", { sandbox_name: name });
  result.sandbox_providers = attached.providers.map((p) => p.metadata?.name);

  const upd = await unary("UpdateConfig", {
    name,
    policy: {
      version: 1,
      network_policies: {
        api: { name: "api", endpoints: [{ host: "api.example.com", port: 443 }], binaries: [{ path: "/usr/bin/curl" }] },
      },
    },
  });
  result.policy_version = upd.version;
  const loaded = await until("policy loaded", 60000, async () => {
    const st = await unary("GetSandboxPolicyStatus", { name, version: upd.version });
    if (st.revision?.status === "POLICY_STATUS_FAILED") {
      throw new Error(`policy version ${upd.version} failed: ${st.revision.load_error}`);
    }
    return st.revision?.status === "POLICY_STATUS_LOADED" ? st : undefined;
  });
  result.policy_status = loaded.revision?.status;
  result.active_version = loaded.active_version;
  const revs = await unary("ListSandboxPolicies", { name });
  result.revisions = revs.revisions.map((r) => `${r.version}:${r.status}`);

  await unary("DeleteSandbox", { name }, 60000);
  await until("sandbox gone", 120000, async () => {
    try {
      await unary("GetSandbox", { name });
      return undefined;
    } catch (e) {
      if (String(e).includes("NOT_FOUND")) return true;
      throw e;
    }
  });
  result.deleted = true;
  const del = await unary("DeleteProvider", { name: provider });
  result.provider_deleted = del.deleted;
  try {
    await unary("ListWorkspaces", {});
    result.unimplemented = "none";
  } catch (e) {
    result.unimplemented = String(e);
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`tsclient: ${e instanceof Error ? e.message : e}\n`);
    process.exit(1);
  },
);
