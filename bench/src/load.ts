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
  readonly baseUrl: string;
  /** Workers, each with one request in flight at a time on its own keep-alive connection. */
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
    options.client === "raw" ? await rawAdders(options.baseUrl, concurrency, keys) : connectAdders(options.baseUrl, concurrency, keys);
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

function connectAdders(baseUrl: string, concurrency: number, keys: number): Adders {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const transport = createConnectTransport({ httpVersion: "1.1", baseUrl, useBinaryFormat: true, nodeOptions: { agent } });
  const client = createClient(Counter, transport);
  const names = Array.from({ length: keys }, (_, i) => keyName(i));
  const add = (k: number) => client.add({ key: names[k], delta: 1n });
  return { workers: Array.from({ length: concurrency }, () => add), close: () => agent.destroy() };
}

async function rawAdders(baseUrl: string, concurrency: number, keys: number): Promise<Adders> {
  const url = new URL(baseUrl);
  const requests = Array.from({ length: keys }, (_, i) =>
    connectUnaryRequest(
      url.host,
      "/bench.v1.Counter/Add",
      toBinary(AddRequestSchema, { $typeName: "bench.v1.AddRequest", key: keyName(i), delta: 1n }),
    ),
  );
  const connections = await Promise.all(Array.from({ length: concurrency }, () => RawConnection.open(url.hostname, Number(url.port))));
  return {
    workers: connections.map((connection) => async (k: number) => {
      const response = await connection.send(requests[k] as Buffer);
      if (response.status !== 200) throw new ConnectError(`HTTP ${response.status}: ${response.body.toString("utf8").slice(0, 200)}`);
      return fromBinary(ValueSchema, response.body);
    }),
    close: () => {
      for (const c of connections) c.close();
    },
  };
}

/** The q-quantile (0..1) of sorted values, nearest rank. */
export function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? Number.NaN;
}

/** Reads keys' values with the `Get` rpc (the shared handler, for Shoal) through the Connect client. */
export async function readOverWire(baseUrl: string, keys: readonly number[]): Promise<Map<number, bigint>> {
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  const client = createClient(Counter, createConnectTransport({ httpVersion: "1.1", baseUrl, nodeOptions: { agent } }));
  const out = new Map<number, bigint>();
  try {
    for (let i = 0; i < keys.length; i += 16) {
      const batch = keys.slice(i, i + 16);
      const values = await Promise.all(batch.map((k) => client.get({ key: keyName(k) })));
      batch.forEach((k, j) => {
        out.set(k, values[j]?.value ?? -1n);
      });
    }
  } finally {
    agent.destroy();
  }
  return out;
}
