import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { ConnectionHealth } from "./health.js";

/** What the metrics read from the runtime when scraped. */
export interface MetricsSource {
  shardStats(): Array<{ shard: number; instances: number; pending: number; outbox: number; memos: number }>;
  storageStats(): { groups: number; records: number; bytes: number } | undefined;
  /** The storage's connection to its servers (NATS), when its backend has one. */
  connection(): ConnectionHealth | undefined;
  /** Per-shard appends to the replicated log (the nats backend's WALs), when the backend has one. */
  appendStats(): ReadonlyArray<{ shard: number; appends: number; errors: number; seconds: number }> | undefined;
}

/** The runtime's Prometheus metrics (one registry per runtime). */
export interface RuntimeMetrics {
  readonly registry: Registry;
  /** A handler run ended with a reply (`outcome`: "ok" or the error code's name). */
  invocationFinished(fn: string, handler: string, outcome: string, seconds: number): void;
  /** A handler threw something other than ShoalError and will run again. */
  invocationRetried(fn: string, handler: string): void;
  /** A commit was appended: how many records it held. */
  committed(records: number): void;
  /** A message failed for good and was dead-lettered. */
  deadLettered(fn: string, handler: string): void;
  /** An invoker answered for another instance than it was asked to run: its effects were refused. */
  invokerRefused(fn: string, handler: string): void;
  /** An Invoke request to a remote function endpoint failed (`reason`: timeout, unavailable, garbage, ...); it is retried or the run fails. */
  remoteInvokeFailed(endpoint: string, reason: string): void;
  /** An Invoke request to a remote function endpoint was answered validly, for a batch of `messages`. */
  remoteInvoked(endpoint: string, messages: number): void;
}

let processRegistry: Registry | undefined;

// One collector per process: its metrics describe the process, not a runtime,
// and each collector starts an event-loop monitor and a GC observer of its own.
function processMetrics(): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/**
 * Creates the runtime's metrics: invocations and their latency by function,
 * handler and outcome; retries; dead letters; commits; per-shard instances, pending messages
 * (the shard's lag) and undelivered outbox entries; and the storage's group
 * commits with the records and bytes they covered; on the nats backend, the
 * NATS connection's state, server and reconnects and each shard's WAL
 * appends, their errors and latency. Beside them, prom-client's
 * process metrics: CPU, resident memory (`process_resident_memory_bytes`),
 * heap (`nodejs_heap_size_used_bytes`), event-loop lag
 * (`nodejs_eventloop_lag_seconds`), GC pauses (`nodejs_gc_duration_seconds`),
 * open handles and file descriptors.
 */
export function createRuntimeMetrics(source: MetricsSource): RuntimeMetrics {
  const registry = new Registry();
  const invocations = new Counter({
    name: "shoal_invocations_total",
    help: "Handler runs that ended with a reply, by function, handler and outcome (ok or the Connect code)",
    labelNames: ["function", "handler", "outcome"] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: "shoal_invocation_duration_seconds",
    help: "Time from the start of a handler run to its reply, calls included, before the commit",
    labelNames: ["function", "handler"] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  const retries = new Counter({
    name: "shoal_invocation_retries_total",
    help: "Handler runs that threw something other than ShoalError and were retried",
    labelNames: ["function", "handler"] as const,
    registers: [registry],
  });
  const refusals = new Counter({
    name: "shoal_invoker_refusals_total",
    help: "Invoker answers refused because they were for another instance than the one asked for (nothing of them committed)",
    labelNames: ["function", "handler"] as const,
    registers: [registry],
  });
  const deadLetters = new Counter({
    name: "shoal_dead_letters_total",
    help: "Messages that failed for good and were dead-lettered (see `shoal dead-letters list`), by function and handler",
    labelNames: ["function", "handler"] as const,
    registers: [registry],
  });
  const remoteErrors = new Counter({
    name: "shoal_remote_invoke_errors_total",
    help: "Invoke requests to a remote function endpoint that failed, by endpoint and reason (timeout, unavailable, tls, garbage, protocol_version, wrong_instance, outcome_count, or the Connect code); nothing of them committed",
    labelNames: ["endpoint", "reason"] as const,
    registers: [registry],
  });
  const remoteBatches = new Histogram({
    name: "shoal_remote_invoke_batch_messages",
    help: "Messages of one instance per valid Invoke answer of a remote function endpoint, by endpoint",
    labelNames: ["endpoint"] as const,
    buckets: [1, 2, 4, 8, 16, 32, 64],
    registers: [registry],
  });
  const commits = new Counter({ name: "shoal_commits_total", help: "Commit records appended", registers: [registry] });
  const perShard = <T extends { shard: number }>(name: string, help: string, rows: () => Iterable<T> | undefined, pick: (s: T) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ["shard"] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const s of rows() ?? []) this.set({ shard: String(s.shard) }, pick(s));
      },
    });
  const shards = () => source.shardStats();
  perShard("shoal_instances", "Instances with state, per shard", shards, (s) => s.instances);
  perShard("shoal_pending_messages", "Messages accepted and not yet processed, per shard (its lag)", shards, (s) => s.pending);
  perShard("shoal_outbox_undelivered", "Outbox entries not yet acknowledged by their receiver, per shard", shards, (s) => s.outbox);
  perShard("shoal_memos", "Memoized replies kept for idempotency keys and calls, per shard", shards, (s) => s.memos);
  const storageGauge = (name: string, help: string, pick: (s: { groups: number; records: number; bytes: number }) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        const stats = source.storageStats();
        if (stats !== undefined) this.set(pick(stats));
      },
    });
  storageGauge("shoal_storage_groups", "Group commits made durable (one fsync each) since start", (s) => s.groups);
  storageGauge("shoal_storage_records", "Records those group commits covered", (s) => s.records);
  storageGauge("shoal_storage_bytes", "Bytes those group commits covered", (s) => s.bytes);
  const states = ["connected", "reconnecting", "closed"] as const;
  new Gauge({
    name: "shoal_nats_connection",
    help: "The NATS connection of the nats backend: 1 for its current state (connected, reconnecting or closed) and server, 0 for the other states",
    labelNames: ["state", "server"] as const,
    registers: [registry],
    collect() {
      this.reset();
      const connection = source.connection();
      if (connection === undefined) return;
      for (const state of states) this.set({ state, server: connection.server }, state === connection.state ? 1 : 0);
    },
  });
  new Gauge({
    name: "shoal_nats_reconnects",
    help: "Times the NATS connection was lost and made again since the node started",
    registers: [registry],
    collect() {
      const connection = source.connection();
      if (connection !== undefined) this.set(connection.reconnects);
    },
  });
  const appends = () => source.appendStats();
  perShard("shoal_wal_appends", "WAL messages JetStream acknowledged since start, per shard (nats backend)", appends, (s) => s.appends);
  perShard(
    "shoal_wal_append_errors",
    "WAL messages refused or lost since start (fenced, timed out, NATS connection lost), per shard (nats backend)",
    appends,
    (s) => s.errors,
  );
  perShard(
    "shoal_wal_append_seconds",
    "Time from the first write into a WAL message to its acknowledgement, summed over the acknowledged ones, per shard (nats backend): divide by shoal_wal_appends for the mean",
    appends,
    (s) => s.seconds,
  );
  return {
    registry: Registry.merge([registry, processMetrics()]),
    invocationFinished(fn, handler, outcome, seconds) {
      invocations.inc({ function: fn, handler, outcome });
      latency.observe({ function: fn, handler }, seconds);
    },
    invocationRetried: (fn, handler) => retries.inc({ function: fn, handler }),
    committed: (records) => commits.inc(records),
    deadLettered: (fn, handler) => deadLetters.inc({ function: fn, handler }),
    invokerRefused: (fn, handler) => refusals.inc({ function: fn, handler }),
    remoteInvokeFailed: (endpoint, reason) => remoteErrors.inc({ endpoint, reason }),
    remoteInvoked: (endpoint, messages) => remoteBatches.observe({ endpoint }, messages),
  };
}
