import type { EventLoopUtilization } from "node:perf_hooks";

/** The servers the benchmark compares, each run in its own process. */
export const kinds = ["plain", "shoal-memory", "shoal-durable"] as const;
/** Diagnostic servers, run only when named in BENCH_KINDS. */
export const extraKinds = ["plain-listen"] as const;
export type Kind = (typeof kinds)[number] | (typeof extraKinds)[number];

export function isKind(value: unknown): value is Kind {
  return typeof value === "string" && ([...kinds, ...extraKinds] as readonly string[]).includes(value);
}

/** Counters of the storage backend's durable writes (`runtime.storageStats()`). */
export interface StorageCounters {
  readonly groups: number;
  readonly records: number;
  readonly bytes: number;
}

/** What the server process reports about itself. */
export interface ServerReport {
  /** Resident set size, bytes. */
  readonly rss: number;
  /** `process.cpuUsage()`, microseconds. */
  readonly cpu: NodeJS.CpuUsage;
  /** `performance.eventLoopUtilization()`, cumulative. */
  readonly elu: EventLoopUtilization;
  /** `runtime.storageStats()`; undefined for the plain server or a backend without counters. */
  readonly storage: StorageCounters | undefined;
}

/**
 * Requests from the benchmark to a server process over the fork IPC channel
 * (`serialization: "advanced"`, so bigints and Maps cross as they are).
 */
export interface ServerRequest {
  readonly id: number;
  /** `report`: a ServerReport; `state`: every counter's value; `close`: shut down gracefully and exit 0. */
  readonly op: "report" | "state" | "close";
}

export interface ServerReply {
  readonly id: number;
  readonly report?: ServerReport;
  readonly state?: Map<string, bigint>;
  readonly error?: string;
}
