// One benchmark server in its own process: `node bench/dist/server.js <kind> [--dir <path>]`.
// Prints its URL as the first line of stdout. Started by the benchmark with
// child_process.fork, it answers ServerRequests on the IPC channel; started by
// hand, it prints a ServerReport on SIGUSR2 and exits on SIGINT/SIGTERM.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createLocalStorage, createMemoryStorage, createRuntime, listen, type Runtime } from "@shoal/runtime";
import { implement } from "@shoal/sdk";
import { counter } from "./counter.js";
import { Counter } from "./gen/bench/v1/counter_pb.js";
import { CounterFunction } from "./gen/bench/v1/counter_shoal.js";
import {
  extraKinds,
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
 * `directory` (default: a fresh temporary directory, removed on close).
 */
async function startShoal(kind: "shoal-memory" | "shoal-durable", directory: string | undefined): Promise<BenchServer> {
  const temporary = kind === "shoal-durable" && directory === undefined ? mkdtempSync(join(tmpdir(), "shoal-bench-")) : undefined;
  const storage =
    kind === "shoal-memory"
      ? createMemoryStorage()
      : await createLocalStorage({ directory: directory ?? (temporary as string), fsync: true });
  const runtime = createRuntime({ functions: [implement(CounterFunction, counter)], storage, logger: "silent" });
  await runtime.start();
  const server = await listen(runtime, { port: 0 });
  return {
    url: server.url,
    counters: () => new Map(runtime.instancesOf(CounterFunction).map(({ key, state }) => [key, state.value])),
    storageStats: () => runtime.storageStats(),
    async close() {
      await server.close();
      await runtime.close();
      if (temporary !== undefined) rmSync(temporary, { recursive: true, force: true });
    },
  };
}

function parseArgs(argv: readonly string[]): { kind: Kind; directory: string | undefined } {
  const [kind, ...rest] = argv;
  if (!isKind(kind))
    throw new Error(`usage: node bench/dist/server.js <${[...kinds, ...extraKinds].join("|")}> [--dir <path>] (got ${kind ?? "nothing"})`);
  let directory: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--dir" && rest[i + 1] !== undefined) directory = rest[++i];
    else throw new Error(`unknown argument ${rest[i]}`);
  }
  return { kind, directory };
}

function report(server: BenchServer): ServerReport {
  return {
    rss: process.memoryUsage.rss(),
    cpu: process.cpuUsage(),
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
  process.on("SIGUSR2", () => console.log(JSON.stringify(report(server))));
  process.on("message", (message: ServerRequest) => {
    const send = (reply: ServerReply) => process.send?.(reply);
    try {
      if (message.op === "report") send({ id: message.id, report: report(server) });
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
