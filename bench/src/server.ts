// One benchmark server in its own process: `node bench/dist/server.js <kind> [--dir <path>]`.
// Prints its URL as the first line of stdout. shoal-remote forks its function
// endpoint (src/endpoint.ts) as a second process. Started by the benchmark with
// child_process.fork, it answers ServerRequests on the IPC channel; started by
// hand, it prints a ServerReport on SIGUSR2 and exits on SIGINT/SIGTERM.
import { fork } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { create, type DescFile, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  createLocalStorage,
  createMemoryStorage,
  createRuntime,
  defaults,
  listen,
  type RemoteFunctionsOptions,
  type Runtime,
} from "@shoal/runtime";
import { implement } from "@shoal/sdk";
import { counter } from "./counter.js";
import { Counter, file_bench_v1_counter } from "./gen/bench/v1/counter_pb.js";
import { CounterFunction } from "./gen/bench/v1/counter_shoal.js";
import {
  type ClusterKind,
  type EndpointReport,
  extraKinds,
  isClusterKind,
  isKind,
  type Kind,
  kinds,
  type ServerReply,
  type ServerReport,
  type ServerRequest,
  type StorageCounters,
} from "./protocol.js";

interface BenchServer {
  readonly url: string;
  counters(): Map<string, bigint>;
  storageStats(): StorageCounters | undefined;
  /** CPU time and RSS of the server's other processes (shoal-remote's endpoint). */
  others?(): Promise<{ cpu: NodeJS.CpuUsage; rss: number }>;
  close(): Promise<void>;
}

function plainCounter(values: Map<string, bigint>) {
  return (router: ConnectRouter) =>
    router.service(Counter, {
      add(req) {
        const value = (values.get(req.key) ?? 0n) + req.delta;
        values.set(req.key, value);
        return { value };
      },
      get(req) {
        return { value: values.get(req.key) ?? 0n };
      },
    });
}

/**
 * Diagnostic: the plain counter served by Shoal's `listen()` (its protocol
 * sniffing, HTTP/1.1 + h2c servers and adapter options) with no runtime
 * behind it, to separate the ingress server's cost from the runtime's.
 */
async function startPlainListen(): Promise<BenchServer> {
  const values = new Map<string, bigint>();
  const server = await listen({ routes: plainCounter(values), maxRequestBytes: 4 * 1024 * 1024 } as unknown as Runtime, { port: 0 });
  return { url: server.url, counters: () => new Map(values), storageStats: () => undefined, close: () => server.close() };
}

/** The baseline: the same Counter service in plain connect-node over a Map, on node:http (HTTP/1.1). */
async function startPlain(): Promise<BenchServer> {
  const values = new Map<string, bigint>();
  const handler = connectNodeAdapter({ routes: plainCounter(values) });
  const server = createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    counters: () => new Map(values),
    storageStats: () => undefined,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * The Shoal counter on the memory store, or on the local store with fsync in
 * `directory` (default: a fresh temporary directory, removed on close); for
 * shoal-remote, its handlers in a function endpoint process (startEndpoint).
 */
async function startShoal(kind: "shoal-memory" | "shoal-durable" | "shoal-remote", directory: string | undefined): Promise<BenchServer> {
  const temporary = kind !== "shoal-memory" && directory === undefined ? mkdtempSync(join(tmpdir(), "shoal-bench-")) : undefined;
  const storage =
    kind === "shoal-memory"
      ? createMemoryStorage()
      : await createLocalStorage({ directory: directory ?? (temporary as string), fsync: true });
  const endpoint = kind === "shoal-remote" ? await startEndpoint() : undefined;
  const runtime = createRuntime({
    functions: endpoint === undefined ? [implement(CounterFunction, counter)] : [],
    remote: endpoint?.remote,
    storage,
    logger: "silent",
  });
  await runtime.start();
  const server = await listen(runtime, { port: 0 });
  return {
    url: server.url,
    counters: () => new Map(runtime.instancesOf(CounterFunction).map(({ key, state }) => [key, state.value])),
    storageStats: () => runtime.storageStats(),
    others: endpoint?.report,
    async close() {
      await server.close();
      await runtime.close();
      endpoint?.close();
      if (temporary !== undefined) rmSync(temporary, { recursive: true, force: true });
    },
  };
}

/**
 * shoal-remote's function endpoint: src/endpoint.ts forked, and the remote
 * functions config that points the runtime at it, with `functions.remote`'s
 * defaults (batching on: maxBatch 16; up to 64 Invoke requests in flight)
 * over HTTP/2 without TLS (h2c).
 */
async function startEndpoint(): Promise<{
  remote: RemoteFunctionsOptions;
  report(): Promise<{ cpu: NodeJS.CpuUsage; rss: number }>;
  close(): void;
}> {
  const endpoint = fork(fileURLToPath(new URL("./endpoint.js", import.meta.url)), [], { stdio: ["ignore", "pipe", "inherit", "ipc"] });
  const url = await new Promise<string>((resolve, reject) => {
    endpoint.once("exit", (code) => reject(new Error(`the function endpoint exited (code ${code}) before printing its URL`)));
    createInterface({ input: endpoint.stdout as NodeJS.ReadableStream }).once("line", (line) => resolve(line.trim()));
  });
  const waiting = new Map<number, (report: EndpointReport) => void>();
  let nextId = 1;
  endpoint.on("message", (report: EndpointReport) => {
    waiting.get(report.id)?.(report);
    waiting.delete(report.id);
  });
  // What `buf build -o functions.binpb` would write for the counter: its file and imports, imports first.
  const files: DescFile[] = [];
  const add = (f: DescFile) => {
    if (files.includes(f)) return;
    for (const d of f.dependencies) add(d);
    files.push(f);
  };
  add(file_bench_v1_counter);
  return {
    remote: {
      descriptors: toBinary(FileDescriptorSetSchema, create(FileDescriptorSetSchema, { file: files.map((f) => f.proto) })),
      descriptorsSource: "bench/proto/bench/v1/counter.proto",
      endpoints: [
        {
          ...defaults.remote,
          path: "functions.remote[0]",
          type: Counter.typeName,
          package: undefined,
          url,
          invokeMany: { maxRequests: defaults.remote.invokeManyMaxRequests, maxBytes: defaults.remote.invokeManyMaxBytes },
          tls: undefined,
          bearerToken: undefined,
        },
      ],
    },
    report: () =>
      new Promise((resolve) => {
        const id = nextId++;
        waiting.set(id, resolve);
        endpoint.send({ id });
      }),
    close: () => endpoint.disconnect(),
  };
}

function parseArgs(argv: readonly string[]): { kind: Exclude<Kind, ClusterKind>; directory: string | undefined } {
  const [kind, ...rest] = argv;
  if (!isKind(kind) || isClusterKind(kind))
    throw new Error(
      `usage: node bench/dist/server.js <${[...kinds, ...extraKinds].filter((k) => !isClusterKind(k)).join("|")}> [--dir <path>] (got ${kind ?? "nothing"}; the cluster kinds run from bench/dist/run.js)`,
    );
  let directory: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--dir" && rest[i + 1] !== undefined) directory = rest[++i];
    else throw new Error(`unknown argument ${rest[i]}`);
  }
  return { kind, directory };
}

async function report(server: BenchServer): Promise<ServerReport> {
  const own = { rss: process.memoryUsage.rss(), cpu: process.cpuUsage() };
  const others = await server.others?.();
  return {
    rss: own.rss + (others?.rss ?? 0),
    cpu: others === undefined ? own.cpu : { user: own.cpu.user + others.cpu.user, system: own.cpu.system + others.cpu.system },
    endpointCpu: others?.cpu,
    elu: performance.eventLoopUtilization(),
    storage: server.storageStats(),
  };
}

async function main() {
  const { kind, directory } = parseArgs(process.argv.slice(2));
  const server =
    kind === "plain" ? await startPlain() : kind === "plain-listen" ? await startPlainListen() : await startShoal(kind, directory);
  let closing: Promise<void> | undefined;
  const shutdown = () => {
    closing ??= server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error(err);
        process.exit(1);
      },
    );
    return closing;
  };
  process.on("SIGINT", shutdown);
  process.on("SIGTERM", shutdown);
  process.on("SIGUSR2", () => void report(server).then((r) => console.log(JSON.stringify(r))));
  process.on("message", async (message: ServerRequest) => {
    const send = (reply: ServerReply) => process.send?.(reply);
    try {
      if (message.op === "report") send({ id: message.id, report: await report(server) });
      else if (message.op === "state") send({ id: message.id, state: server.counters() });
      else if (message.op === "close") {
        send({ id: message.id });
        void shutdown();
      }
    } catch (err) {
      send({ id: message.id, error: err instanceof Error ? err.message : String(err) });
    }
  });
  // The parent going away (the benchmark was interrupted) ends this process too.
  process.on("disconnect", () => void shutdown());
  console.log(server.url);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
