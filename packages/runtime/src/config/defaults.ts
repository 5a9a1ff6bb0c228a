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
  /**
   * How long an invocation awaits a call's result before it sends the call
   * again, in ms: the callee runs a call once and answers a copy with the kept
   * result, so a result lost on its way is asked for again.
   */
  callResendMs: 10_000,
  /** How long call and idempotency-key replies are kept, in ms (24 h). */
  memoRetentionMs: 24 * 3600_000,
  /**
   * Decoded instances a node holds in memory, across its shards (passivation):
   * beyond this the least recently used are dropped and read back from the
   * store on their next message.
   */
  instanceCacheSize: 10_000,
  /** Time after its last use at which an instance is dropped from memory, in ms. */
  instanceIdleMs: 60_000,
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
    /** `local` (files, durable), `nats` (JetStream, cluster preview) or `memory` (tests only). */
    backend: "local",
    /** The local store's directory; with `nats`, the node's materialized copy of its shards (rebuilt from JetStream when missing). */
    directory: ".shoal",
    /** Wait for fsync before acknowledging an append. */
    fsync: true,
    /** With `nats`: the NATS servers to connect to. */
    servers: ["nats://127.0.0.1:4222"],
    /** With `nats`: the first part of every stream, bucket and subject name (`<prefix>-wal-<shard>`, `<prefix>-leases`, `<prefix>.in.<shard>`). */
    prefix: "shoal",
  },
  cluster: {
    /** How long a shard lease and a node's membership record last without renewal, in ms (renewed every third of it). */
    leaseMs: 5_000,
  },
  /** Each remote function endpoint (`functions.remote` in shoal.yaml), unless its entry says otherwise. */
  remote: {
    /** Time one Invoke request may take before it is abandoned and retried, in ms. */
    timeoutMs: 10_000,
    /** Invoke requests in flight to the endpoint at once; more wait in their shard (backpressure), none is dropped. */
    maxConcurrent: 64,
    /** Queued messages of one instance sent in one Invoke request. */
    maxBatch: 16,
    /**
     * Invocations of distinct instances that are ready at once (in one turn of
     * the event loop, or while every request slot is taken) go to the endpoint
     * in one InvokeMany request: at most this many, and at most `invokeManyMaxBytes`
     * of requests (one larger request goes alone).
     */
    invokeManyMaxRequests: 32,
    invokeManyMaxBytes: 4 * 1024 * 1024,
    /** Retries of a failed Invoke request (timeout, unavailable, 5xx, an invalid answer): attempts (the first included), first delay, upper bound of the doubling delay. */
    retry: { maxAttempts: 3, initialDelayMs: 100, maxDelayMs: 2_000 },
  },
  /** Keys or dead letters an admin listing returns when the request names no limit. */
  adminListLimit: 100,
} as const;
