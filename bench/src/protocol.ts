import type { EventLoopUtilization } from "node:perf_hooks";

/** The servers the benchmark compares, each run in its own process. */
export const kinds = ["plain", "shoal-memory", "shoal-durable", "shoal-remote"] as const;
/**
 * Cluster mode on NATS JetStream (src/cluster.ts): N `shoal-node` processes on
 * NATS streams of R replicas (`cluster-<N>n-r<R>`), one nats-server per
 * replica. Run only when named in BENCH_KINDS (`cluster` names all four).
 */
export const clusterKinds = ["cluster-1n-r1", "cluster-3n-r1", "cluster-1n-r3", "cluster-3n-r3"] as const;
/** Diagnostic servers, run only when named in BENCH_KINDS. */
export const extraKinds = ["plain-listen", ...clusterKinds] as const;
export type Kind = (typeof kinds)[number] | (typeof extraKinds)[number];
export type ClusterKind = (typeof clusterKinds)[number];

export function isClusterKind(kind: Kind): kind is ClusterKind {
  return (clusterKinds as readonly string[]).includes(kind);
}

export function isKind(value: unknown): value is Kind {
  return typeof value === "string" && ([...kinds, ...extraKinds] as readonly string[]).includes(value);
}

/** Counters of the storage backend's durable writes (`runtime.storageStats()`). */
export interface StorageCounters {
  readonly groups: number;
  readonly records: number;
  readonly bytes: number;
}

/** What the shoal-remote server's function endpoint process reports about itself (src/endpoint.ts). */
export interface EndpointReport {
  readonly id: number;
  readonly cpu: NodeJS.CpuUsage;
  readonly rss: number;
}

/**
 * What the server process reports about itself; for shoal-remote, `rss` and
 * `cpu` add up the runtime's process and its function endpoint's.
 */
export interface ServerReport {
  /** Resident set size, bytes. */
  readonly rss: number;
  /** `process.cpuUsage()`, microseconds. */
  readonly cpu: NodeJS.CpuUsage;
  /** shoal-remote: the function endpoint's share of `cpu`. */
  readonly endpointCpu?: NodeJS.CpuUsage;
  /** `performance.eventLoopUtilization()`, cumulative; undefined for a cluster (several event loops). */
  readonly elu: EventLoopUtilization | undefined;
  /** `runtime.storageStats()`; undefined for the plain server or a backend without counters. */
  readonly storage: StorageCounters | undefined;
  /** A cluster's runtime nodes and nats-servers apart (from /proc): CPU time so far (µs) and RSS now (bytes). */
  readonly groups?: { readonly nodes: ProcessUsage; readonly nats: ProcessUsage };
}

/** CPU time (user + system, µs, since start) and resident set size (bytes) of a group of processes. */
export interface ProcessUsage {
  readonly cpuUs: number;
  readonly rss: number;
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
