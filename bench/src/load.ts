import { Agent } from "node:http";
import { performance } from "node:perf_hooks";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AddRequestSchema, Counter, ValueSchema } from "./gen/bench/v1/counter_pb.js";
import { connectUnaryRequest, RawConnection } from "./raw-client.js";

/**
 * How the load generator speaks Connect: `connect` is the real client
 * (createConnectTransport from @connectrpc/connect-node); `raw` writes the same
 * request bytes on plain sockets, for when the real client costs more CPU than
 * the server under test.
 */
export type ClientKind = "connect" | "raw";

export interface LoadOptions {
  /** The ingresses: each worker sends its requests to them in turn (a cluster's nodes), starting with its own. */
  readonly baseUrls: readonly string[];
  /** Workers, each with one request in flight at a time on its own keep-alive connection (per ingress). */
  readonly concurrency: number;
  /** Keys `k0` ... `k<keys-1>`, picked uniformly at random per request. */
  readonly keys: number;
  /** Default `connect`. */
  readonly client?: ClientKind;
}

export interface SliceOptions {
  /** Load before the measured window (not counted). */
  readonly warmupMs: number;
  /** The measured window; 0 for a warm-up only. */
  readonly durationMs: number;
  /** Called when the measured window opens and closes (not awaited: workers keep going). */
  readonly onMeasureStart?: () => void;
  readonly onMeasureEnd?: () => void;
}

export interface SliceResult {
  /** Requests that completed inside the measured window. */
  readonly completed: number;
  readonly seconds: number;
  /** Latencies of those requests, ms, unsorted. */
  readonly latenciesMs: number[];
  /** This process's CPU time in the window, µs. */
  readonly clientCpuUs: number;
}

/** Workers against one server, reused across slices so connections and counts persist. */
export interface LoadGenerator {
  /** Runs every worker for warm-up plus window, then waits for the requests in flight. */
  slice(options: SliceOptions): Promise<SliceResult>;
  /** Successful adds per key so far, warm-ups included. */
  readonly acked: Uint32Array;
  readonly errors: number;
  /** Error counts by message (the first few kinds). */
  readonly errorKinds: ReadonlyMap<string, number>;
  close(): void;
}

export function keyName(i: number): string {
  return `k${i}`;
}

/** Workers looping `add({ key: random, delta: 1 })` over the Connect protocol (binary protobuf, HTTP/1.1). */
export async function createLoadGenerator(options: LoadOptions): Promise<LoadGenerator> {
  const { concurrency, keys } = options;
  const adders =
    options.client === "raw" ? await rawAdders(options.baseUrls, concurrency, keys) : connectAdders(options.baseUrls, concurrency, keys);
  const acked = new Uint32Array(keys);
  const errorKinds = new Map<string, number>();
  let errors = 0;

  async function slice(slice: SliceOptions): Promise<SliceResult> {
    const latencies: number[] = [];
    const start = performance.now();
    const measureStart = start + slice.warmupMs;
    const measureEnd = measureStart + slice.durationMs;
    // The window's edges are timers; workers stop on the clock, so a timer that
    // is late (or has not run when the last worker stops) is run by hand.
    let cpuAtStart = process.cpuUsage();
    let cpuInWindow: NodeJS.CpuUsage | undefined;
    let opened = false;
    let closed = false;
    const open = () => {
      if (opened) return;
      opened = true;
      cpuAtStart = process.cpuUsage();
      slice.onMeasureStart?.();
    };
    const close = () => {
      if (closed) return;
      open();
      closed = true;
      cpuInWindow = process.cpuUsage(cpuAtStart);
      slice.onMeasureEnd?.();
    };
    const measured = slice.durationMs > 0;
    const startTimer = measured ? setTimeout(open, slice.warmupMs) : undefined;
    const endTimer = measured ? setTimeout(close, slice.warmupMs + slice.durationMs) : undefined;

    async function worker(add: (key: number) => Promise<unknown>) {
      for (let now = performance.now(); now < measureEnd; now = performance.now()) {
        const k = Math.floor(Math.random() * keys);
        try {
          await add(k);
        } catch (err) {
          errors++;
          const message = ConnectError.from(err).message;
          if (errorKinds.size < 5 || errorKinds.has(message)) errorKinds.set(message, (errorKinds.get(message) ?? 0) + 1);
          await new Promise((resolve) => setTimeout(resolve, 10));
          continue;
        }
        const done = performance.now();
        acked[k] = (acked[k] ?? 0) + 1;
        if (done >= measureStart && done < measureEnd) latencies.push(done - now);
      }
    }

    try {
      await Promise.all(adders.workers.map(worker));
    } finally {
      clearTimeout(startTimer);
      clearTimeout(endTimer);
      if (measured) close();
    }
    const cpu = cpuInWindow ?? { user: 0, system: 0 };
    return { completed: latencies.length, seconds: slice.durationMs / 1000, latenciesMs: latencies, clientCpuUs: cpu.user + cpu.system };
  }

  return {
    slice,
    acked,
    get errors() {
      return errors;
    },
    errorKinds,
    close: () => adders.close(),
  };
}

interface Adders {
  /** One `add(key)` per worker. */
  readonly workers: ReadonlyArray<(key: number) => Promise<unknown>>;
  close(): void;
}

/** Worker w's n-th request goes to ingress (w + n) mod the number of ingresses: every ingress gets an equal share, even at C=1. */
function roundRobin<T>(perIngress: (ingress: number) => T, ingresses: number, concurrency: number): T[][] {
  const targets = Array.from({ length: ingresses }, (_, i) => perIngress(i));
  return Array.from({ length: concurrency }, (_, w) => targets.map((_, n) => targets[(w + n) % ingresses] as T));
}

function cycle<T>(targets: readonly T[]): () => T {
  let n = 0;
  return () => targets[n++ % targets.length] as T;
}

function connectAdders(baseUrls: readonly string[], concurrency: number, keys: number): Adders {
  const agents: Agent[] = [];
  const names = Array.from({ length: keys }, (_, i) => keyName(i));
  const clients = roundRobin(
    (i) => {
      const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
      agents.push(agent);
      const transport = createConnectTransport({
        httpVersion: "1.1",
        baseUrl: baseUrls[i] as string,
        useBinaryFormat: true,
        nodeOptions: { agent },
      });
      return createClient(Counter, transport);
    },
    baseUrls.length,
    concurrency,
  );
  return {
    workers: clients.map((own) => {
      const next = cycle(own);
      return (k: number) => next().add({ key: names[k], delta: 1n });
    }),
    close: () => {
      for (const agent of agents) agent.destroy();
    },
  };
}

async function rawAdders(baseUrls: readonly string[], concurrency: number, keys: number): Promise<Adders> {
  // Every ingress is on the same host and port scheme; the Host header is the first's (Shoal does not route by it).
  const first = new URL(baseUrls[0] as string);
  const requests = Array.from({ length: keys }, (_, i) =>
    connectUnaryRequest(
      first.host,
      "/bench.v1.Counter/Add",
      toBinary(AddRequestSchema, { $typeName: "bench.v1.AddRequest", key: keyName(i), delta: 1n }),
    ),
  );
  // One connection per worker and ingress.
  const connections = await Promise.all(
    Array.from({ length: concurrency }, (_, w) =>
      Promise.all(
        baseUrls.map((_, n) => {
          const url = new URL(baseUrls[(w + n) % baseUrls.length] as string);
          return RawConnection.open(url.hostname, Number(url.port));
        }),
      ),
    ),
  );
  return {
    workers: connections.map((own) => {
      const next = cycle(own);
      return async (k: number) => {
        const response = await next().send(requests[k] as Buffer);
        if (response.status !== 200) throw new ConnectError(`HTTP ${response.status}: ${response.body.toString("utf8").slice(0, 200)}`);
        return fromBinary(ValueSchema, response.body);
      };
    }),
    close: () => {
      for (const c of connections.flat()) c.close();
    },
  };
}

/** The q-quantile (0..1) of sorted values, nearest rank. */
export function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? Number.NaN;
}

/**
 * Reads keys' values with the `Get` rpc (the shared handler, for Shoal)
 * through the Connect client, key i from ingress i mod the number of
 * ingresses. A failed read is tried again for up to `retryForMs` (a cluster's
 * nodes just restarted answer Unavailable until they own their shards).
 */
export async function readOverWire(baseUrls: readonly string[], keys: readonly number[], retryForMs = 0): Promise<Map<number, bigint>> {
  const agents = baseUrls.map(() => new Agent({ keepAlive: true, maxSockets: 16 }));
  const clients = baseUrls.map((baseUrl, i) =>
    createClient(Counter, createConnectTransport({ httpVersion: "1.1", baseUrl, nodeOptions: { agent: agents[i] } })),
  );
  const deadline = performance.now() + retryForMs;
  const get = async (k: number, attempt: number): Promise<bigint> => {
    const client = clients[(k + attempt) % clients.length] as (typeof clients)[number];
    try {
      return (await client.get({ key: keyName(k) })).value;
    } catch (err) {
      if (performance.now() >= deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
      return get(k, attempt + 1);
    }
  };
  const out = new Map<number, bigint>();
  try {
    for (let i = 0; i < keys.length; i += 16 * clients.length) {
      const batch = keys.slice(i, i + 16 * clients.length);
      const values = await Promise.all(batch.map((k) => get(k, 0)));
      batch.forEach((k, j) => {
        out.set(k, values[j] ?? -1n);
      });
    }
  } finally {
    for (const agent of agents) agent.destroy();
  }
  return out;
}
