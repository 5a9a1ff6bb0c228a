/**
 * The one table of a node's defaults. `createRuntime`, `listen`, `shoal.yaml`
 * (`validateConfig`) and the `shoal` command read them from here, so a
 * default changes in one place and they cannot disagree.
 */
export const defaults = {
  /** Number of shards; fixed per deployment (an instance's shard is `hash(type, key) mod shards`). */
  shards: 64,
  /** Handler code running at once across all instances of a node. */
  maxConcurrentInvocations: 1024,
  /** Retries of handlers that throw something other than ShoalError: attempts (the first included), first delay, upper bound of the doubling delay. */
  retry: { maxAttempts: 5, initialDelayMs: 100, maxDelayMs: 5_000 },
  /** Time an invoker has to answer one invocation before it is abandoned and retried (retry policy), in ms. */
  invokeTimeoutMs: 60_000,
  /** How long call and idempotency-key replies are kept, in ms (24 h). */
  memoRetentionMs: 24 * 3600_000,
  /** Records after which a shard writes a snapshot. */
  snapshotEvery: 10_000,
  /**
   * Bytes of log the node may write after a shard's oldest record no snapshot
   * covers before that shard writes a snapshot (32 MiB, two segments of the
   * local store). The log on disk stays near this plus a segment, and a
   * restart replays at most that: see bench/RESULTS.md, `bench:restart`.
   */
  snapshotLogBytes: 32 * 1024 * 1024,
  /** Age of a shard's oldest record no snapshot covers at which it writes one, in ms (10 minutes). */
  snapshotAfterMs: 10 * 60_000,
  /** Log level of the default logger (JSON lines on stderr). */
  logLevel: "info",
  ingress: {
    /** Interface the ingress binds; `0.0.0.0` in a container. */
    host: "127.0.0.1",
    /** Port of the ingress; 0 picks a free one. */
    port: 8080,
    /** Largest request body the ingress accepts, in bytes (4 MiB). */
    maxRequestBytes: 4 * 1024 * 1024,
    /** Whether JSON requests with unknown fields are accepted (fields dropped) instead of refused. */
    ignoreUnknownJsonFields: false,
    /** Time from accept to the first request's headers before a connection is dropped, in ms. */
    headersTimeoutMs: 10_000,
    /** Time a connection may stay open with no request in flight, in ms. */
    idleTimeoutMs: 60_000,
    /** On stop, how long requests in flight may take to finish, in ms. */
    shutdownGraceMs: 5_000,
  },
  storage: {
    /** `local` (files, durable) or `memory` (tests only). */
    backend: "local",
    /** The local store's directory. */
    directory: ".shoal",
    /** Wait for fsync before acknowledging an append. */
    fsync: true,
  },
  /** Keys or dead letters an admin listing returns when the request names no limit. */
  adminListLimit: 100,
} as const;
