// The server of `npm run bench:instances`, one per process:
//
//   node --expose-gc bench/dist/instances-server.js --dir <path> --port <port> [--idle-ms <ms>]
//
// Serves bench.v1.Spreader and bench.v1.Item on the durable local store (fsync
// on) and prints one JSON line on stdout once it listens (InstancesServerReady).
// Started with child_process.fork, it answers InstancesServerRequests on the
// IPC channel; SIGTERM closes it gracefully (exit 0).
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { createLocalStorage, createRuntime, listen } from "@shoal/runtime";
import { implement } from "@shoal/sdk";
import { ItemFunction, SpreaderFunction } from "./gen/bench/v1/instances_shoal.js";
import { initializedCount, items, spreader } from "./items.js";

/** The line the server prints once it listens. */
export interface InstancesServerReady {
  readonly url: string;
  /** `createLocalStorage` + `createRuntime` + `runtime.start()`, ms: the runtime's own start. */
  readonly startMs: number;
  /** Since the process started (its time origin) until it listens, ms. */
  readonly listeningAtMs: number;
}

export interface InstancesServerRequest {
  readonly id: number;
  /** `report`: the server's figures; `gc`: a full collection first (needs --expose-gc), then the report. */
  readonly op: "report" | "gc";
}

export interface InstancesServerReport {
  readonly id: number;
  /** `process.memoryUsage()`, bytes. */
  readonly memory: NodeJS.MemoryUsage;
  /** Item.Init runs so far (see `initializedCount`). */
  readonly initialized: number;
  /** Whether `gc` ran a collection (false without --expose-gc). */
  readonly collected: boolean;
}

const { values } = parseArgs({
  options: {
    dir: { type: "string" },
    port: { type: "string", default: "0" },
    "idle-ms": { type: "string" },
  },
});
if (values.dir === undefined) throw new Error("instances-server: --dir <path> is required (the local store's directory)");
const idleMs = values["idle-ms"] === undefined ? undefined : Number(values["idle-ms"]);

const started = performance.now();
const runtime = createRuntime({
  functions: [implement(SpreaderFunction, spreader), implement(ItemFunction, items)],
  storage: await createLocalStorage({ directory: values.dir, fsync: true }),
  logger: "warn",
  // Passivation: how long an instance stays decoded in memory after its last message.
  instanceIdleMs: idleMs,
});
await runtime.start();
const startMs = performance.now() - started;
const server = await listen(runtime, { host: "127.0.0.1", port: Number(values.port) });

let closing = false;
const shutdown = () => {
  if (closing) return;
  closing = true;
  void (async () => {
    await server.close();
    await runtime.close();
  })().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
};
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
// The bench going away ends this process too.
process.on("disconnect", shutdown);
process.on("message", (request: InstancesServerRequest) => {
  const gc = request.op === "gc" ? (globalThis as { gc?: () => void }).gc : undefined;
  // Twice: the first collection may only unlink what the second frees.
  gc?.();
  gc?.();
  process.send?.({
    id: request.id,
    memory: process.memoryUsage(),
    initialized: initializedCount(),
    collected: gc !== undefined,
  } satisfies InstancesServerReport);
});
console.log(JSON.stringify({ url: server.url, startMs, listeningAtMs: performance.now() } satisfies InstancesServerReady));
