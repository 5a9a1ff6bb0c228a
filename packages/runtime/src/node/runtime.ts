import { randomUUID } from "node:crypto";
import { createRegistry, type DescFile, type DescMessage, fromBinary, type Message, type MessageShape, toBinary } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { Code } from "@connectrpc/connect";
import { type FunctionType, type Implementation, isModule, type Logger, type ShoalModule } from "@shoal/sdk";
import { type DeadLetter, type EgressMessage, type Envelope, errorReply } from "@shoal/sdk/internal";
import type { Logger as PinoLogger } from "pino";
import { defaults } from "../config/defaults.js";
import { createStdoutEgress, type Egress } from "../egress/egress.js";
import { CallCycles } from "../invoker/call-cycles.js";
import { createRemoteFunctions, type RemoteFunctionsOptions } from "../invoker/remote-functions.js";
import type { RemoteInvoker } from "../invoker/remote-invoker.js";
import { assessHealth, type ConnectionHealth, type Health } from "../observe/health.js";
import { createPinoLogger, type LogLevel, toShoalLogger } from "../observe/logger.js";
import { createRuntimeMetrics } from "../observe/metrics.js";
import { shardOf } from "../protocol/shard-hash.js";
import { type Clock, systemClock } from "../shard/clock.js";
import { createInstanceCache } from "../shard/instance-cache.js";
import { createSemaphore } from "../shard/semaphore.js";
import {
  type RegisteredFunction,
  type RetryPolicy,
  type ShardHost,
  ShardProcessor,
  ShardUnavailableError,
} from "../shard/shard-processor.js";
import { controlHandlers } from "../shard/shard-state.js";
import type { ShardAppendStats, ShardStorage } from "../storage/shard-store.js";
import { instanceKeyTooLong } from "../storage/shard-tables.js";
import { InvalidInputError, RecordEncodingError } from "../storage/storage.js";
import { createCycleProbe } from "./cycle-probe.js";
import { allShards, type ShardOwnership } from "./ownership.js";
import { type KeyPage, mergeInstancePages, type PageRequest } from "./paging.js";
import { type Answer, createReplyChannel } from "./reply-channel.js";
import { createRouter, type NodeTransport, replyAddressOf, type ShardDirectory, type ShardInbox } from "./router.js";

export type { Answer } from "./reply-channel.js";

/** How often the node drops idle instances from memory and shards sweep expired memos and journals. */
const maintenanceMs = 1_000;

/** Options of `createRuntime` and `createNodeRuntime`. */
export interface RuntimeOptions {
  /** The functions this node runs: a module or implementations. */
  readonly functions: ShoalModule | readonly Implementation[];
  /**
   * Function types whose handlers run in remote endpoints
   * (`shoal.v1.FunctionService`): their descriptors and endpoints. Default: none.
   */
  readonly remote?: RemoteFunctionsOptions;
  /** Where shards keep their state (`createLocalStorage`, or `createMemoryStorage` in tests). */
  readonly storage: ShardStorage;
  /** Number of shards; fixed per deployment. Default 64. */
  readonly shards?: number;
  /** Handler code running at once across all instances. Default 1024. */
  readonly maxConcurrentInvocations?: number;
  /** Retries of handlers that throw something other than ShoalError. Default 5 attempts from 100 ms, doubling to 5 s. */
  readonly retry?: Partial<RetryPolicy>;
  /** How long call and idempotency-key replies are kept. Default 24 h. */
  readonly memoRetentionMs?: number;
  /**
   * Time a handler run may take before it is abandoned (its effects never
   * commit) and retried by the retry policy, in ms. Time a handler awaits
   * `ctx.call` does not count. Default 60 s.
   */
  readonly invokeTimeoutMs?: number;
  /**
   * How long an invocation awaits a call's result before it sends the call
   * again, in ms. The callee runs a call once and answers a copy with the
   * kept result, so a copy costs a message, never a second run. Default 10 s.
   */
  readonly callResendMs?: number;
  /**
   * Decoded instances the node holds in memory, across its shards; beyond
   * this the least recently used are dropped, and read back from the store
   * on their next message. Default 10 000.
   */
  readonly instanceCacheSize?: number;
  /** Time after its last use at which an instance is dropped from memory, in ms. Default 60 s. */
  readonly instanceIdleMs?: number;
  /** Largest request body the ingress accepts, in bytes. Default 4 MiB. */
  readonly maxRequestBytes?: number;
  /**
   * Accept Connect JSON requests with fields their message does not have,
   * dropping those fields. Default `false`: such a request fails with
   * InvalidArgument naming the field, as the protobuf JSON mapping specifies,
   * because a misspelt field (`copys`) silently ignored changes what the
   * request does. Set it when older nodes must accept JSON from newer clients
   * during a rollout. Binary requests always keep unknown fields.
   */
  readonly ignoreUnknownJsonFields?: boolean;
  /**
   * Named egresses; `"stdout"` stands for the runtime's stdout egress (JSON
   * lines), which also exists as `stdout` unless replaced.
   */
  readonly egress?: Readonly<Record<string, Egress | "stdout">>;
  /**
   * Where messages to a name not in `egress` go. Default: nowhere, and an
   * invocation that emits to such a name fails (`shoal dev` and the test env
   * set it).
   */
  readonly defaultEgress?: Egress | "stdout";
  /** Time source; tests pass a manual clock. Default: the wall clock. */
  readonly clock?: Clock;
  /** A pino logger, or a level for the default one on stderr. Default "info". */
  readonly logger?: PinoLogger | LogLevel;
  /** This node's id. Default: a random UUID. */
  readonly nodeId?: string;
  /** Which shards this node opens at start. Default: every shard (one node serves them all). */
  readonly ownership?: ShardOwnership;
  /**
   * Who owns the shards this node has not open, shared by the nodes of a
   * deployment (`createMemoryDirectory` for nodes in one process). Default:
   * none; a message for a shard not open here fails with Unavailable.
   */
  readonly directory?: ShardDirectory;
  /** How this node reaches the other nodes (`createInProcessTransport`). Default: none. */
  readonly transport?: NodeTransport;
  /**
   * Where one-way messages go, to any shard, and where the shards open here
   * take theirs from (the cluster's inputs stream, `createShardInputs`).
   * Default: none; they go straight to the shard, here or over `transport`.
   */
  readonly inbox?: ShardInbox;
  /**
   * Whether `close()` closes `storage`. Default `true`. Set `false` when
   * several nodes share one backend, and close it after every node closed.
   */
  readonly closeStorage?: boolean;
}

/**
 * A node's runtime core, without its Connect routes: what the ingress, admin
 * service and server (the http layer, above this one) serve.
 */
export interface NodeRuntime {
  readonly nodeId: string;
  readonly shards: number;
  /** The function types this node runs, by type name. */
  readonly functions: ReadonlyMap<string, RegisteredFunction>;
  /** Largest request body the ingress accepts, in bytes. */
  readonly maxRequestBytes: number;
  /** Whether the ingress drops unknown fields of JSON requests instead of refusing them (`RuntimeOptions.ignoreUnknownJsonFields`). */
  readonly ignoreUnknownJsonFields: boolean;
  /** The shards this node owns now. */
  readonly ownership: ShardOwnership;
  /**
   * Takes a shard over at run time: opens it (which fences the previous
   * owner's log: its late appends are refused, and its shard stops), recovers
   * it, records this node in the directory and resumes its work.
   */
  acquireShard(shard: number): Promise<void>;
  /**
   * Gives a shard up at run time: stops routing to it here, answers its
   * waiting requests Unavailable (they retry) and closes its log.
   */
  releaseShard(shard: number): Promise<void>;
  /**
   * Whether this node is ready to serve, served by `listen` at `GET /healthz`:
   * not while a shard it owns is unavailable, nor while its storage's
   * connection (NATS) is lost.
   */
  health(): Health;
  /** Prometheus metrics of this node, served by `listen` at `GET /metrics`. */
  metrics(): Promise<{ contentType: string; text: string }>;
  /** Opens and recovers every shard, then resumes pending work. */
  start(): Promise<void>;
  /** The committed state of an instance, or undefined if it has none. */
  stateOf<S extends DescMessage>(fn: FunctionType<GenService<GenServiceMethods>, S, unknown>, key: string): MessageShape<S> | undefined;
  /** An instance's committed state, binary protobuf. */
  stateBytesOf(typeName: string, key: string): Uint8Array | undefined;
  /** The keys of a function type's instances with state, across this node's shards. */
  keysOf(typeName: string): string[];
  /**
   * A page of the keys of a function type's instances with state, across
   * this node's shards: the first `limit` after `after`, in key order, from
   * a page of each shard (never every key of a shard).
   */
  listInstances(typeName: string, request: PageRequest): KeyPage;
  /**
   * Copies the node's store into `directory` (new or empty; relative to the
   * working directory) while it serves (`ShardStorage.backup`); resolves
   * `undefined` when the backend cannot copy itself online. Rejects with
   * `StorageError` when the directory is not usable.
   */
  backup(directory: string): Promise<{ directory: string; bytes: number } | undefined>;
  /** Every instance of a function type with its state. */
  instancesOf<S extends DescMessage>(
    fn: FunctionType<GenService<GenServiceMethods>, S, unknown>,
  ): Array<{ key: string; state: MessageShape<S> }>;
  /** Per-shard counters. */
  status(): Array<ReturnType<ShardProcessor["stats"]>>;
  /** Messages that failed for good, per shard open here (the most recent 1 000 each), oldest first. */
  deadLetters(): Array<{ shard: number; letter: DeadLetter }>;
  /** Storage counters, when the backend keeps them. */
  storageStats(): { groups: number; records: number; bytes: number } | undefined;
  /** The storage's connection to its servers (NATS), when its backend has one. */
  storageConnection(): ConnectionHealth | undefined;
  /** Per-shard log appends and the sequence applied (the nats backend's WALs), when the backend has a replicated log. */
  appendStats(): readonly ShardAppendStats[] | undefined;
  /** Resolves when no invocation is running. */
  whenIdle(): Promise<void>;
  /** Stops every shard and closes the storage. */
  close(): Promise<void>;

  // for the ingress and tests
  /**
   * Accepts a message and resolves with its reply once committed. An
   * in-process caller may pass the request decoded, and gets the reply
   * message as `output` when it succeeded. Rejects with ShardUnavailableError
   * when the reply cannot be had now (nothing committed it): retry then.
   */
  request(envelope: Envelope, decodedRequest?: Message): Promise<Answer>;
  /**
   * Accepts a one-way message; resolves once it is durable. Throws
   * `RecordEncodingError` when the message cannot be stored (the http layer
   * answers InvalidArgument), `ShardUnavailableError` when its shard is not open.
   */
  accept(envelope: Envelope): Promise<void>;
  readonly clock: Clock;
  readonly logger: Logger;
}

/** Creates a node. Call `start()` before serving. */
export function createNodeRuntime(options: RuntimeOptions): NodeRuntime {
  const shards = options.shards ?? defaults.shards;
  if (!Number.isInteger(shards) || shards < 1 || shards > 65536)
    throw new Error(`shards must be an integer from 1 to 65536, got ${shards}`);
  for (const name of ["instanceCacheSize", "instanceIdleMs", "callResendMs"] as const) {
    const value = options[name];
    if (value !== undefined && (!Number.isSafeInteger(value) || value < 1))
      throw new Error(`${name} must be a positive integer, got ${value} (default ${defaults[name]})`);
  }
  const nodeId = options.nodeId ?? randomUUID();
  const clock = options.clock ?? systemClock;
  const pinoLogger = typeof options.logger === "object" ? options.logger : createPinoLogger(options.logger ?? defaults.logLevel);
  const logger = toShoalLogger(pinoLogger);
  const implementations = isModule(options.functions) ? options.functions.implementations : options.functions;
  const functions = new Map<string, RegisteredFunction>();
  for (const impl of implementations) {
    if (functions.has(impl.fn.typeName)) throw new Error(`${impl.fn.typeName} is implemented twice`);
    functions.set(impl.fn.typeName, { fn: impl.fn, handlers: impl.handlers });
  }
  const metrics = createRuntimeMetrics({
    shardStats: () => runtime.status(),
    storageStats: () => options.storage.stats?.(),
    connection: () => options.storage.connection?.(),
    appendStats: () => options.storage.appendStats?.(),
  });
  const remoteInvokers = new Map<string, RemoteInvoker>();
  for (const { fn, invoker } of options.remote === undefined
    ? []
    : createRemoteFunctions(options.remote, { logger, metrics, createLimit: createSemaphore })) {
    if (functions.has(fn.typeName)) {
      for (const i of remoteInvokers.values()) i.close();
      invoker.close();
      throw new Error(`${fn.typeName} is both in the module and served by a remote endpoint (${invoker.endpoint}); keep one`);
    }
    // No handler code here: its invoker runs them at the endpoint.
    functions.set(fn.typeName, { fn, handlers: {} });
    remoteInvokers.set(fn.typeName, invoker);
  }
  const files = new Set<DescFile>();
  for (const { fn } of functions.values()) files.add(fn.service.file);
  const registry = createRegistry(...files);
  const stdout = createStdoutEgress(registry);
  const egressNamed = (name: string): Egress | undefined => {
    const egress = options.egress?.[name] ?? options.defaultEgress ?? (name === "stdout" ? "stdout" : undefined);
    return egress === "stdout" ? stdout : egress;
  };
  const retry: RetryPolicy = { ...defaults.retry, ...options.retry };
  const ownership = options.ownership ?? allShards(shards);
  const processors: Array<ShardProcessor | undefined> = new Array(shards).fill(undefined);
  const recovering = new Set<number>();
  const acquiring = new Map<number, Promise<void>>();
  const replies = createReplyChannel();
  const callCycles = new CallCycles();
  const router = createRouter({
    nodeId,
    awaitsOf: (instance) => callCycles.awaitsOf(instance),
    processorOf: (shard) => processors[shard],
    shardFor,
    directory: options.directory,
    transport: options.transport,
    inbox: options.inbox,
    replies,
    encodeRequest(envelope, decoded) {
      const input = functions.get(envelope.target?.type ?? "")?.fn.handlers.get(envelope.handler)?.method.input;
      if (input === undefined) throw new Error(`no request type for ${envelope.target?.type}.${envelope.handler}`);
      return toBinary(input, decoded);
    },
    encodeOutput(output) {
      const schema = registry.getMessage(output.$typeName);
      if (schema === undefined) throw new Error(`no message type ${output.$typeName} among this node's functions`);
      return toBinary(schema, output);
    },
  });
  let detach: (() => void) | undefined;
  let closed = false;
  let started: Promise<void> | undefined;
  let maintenance: NodeJS.Timeout | undefined;

  /** Each open shard's consumer of its inbox, settling once the previous one stopped. */
  const consumers = new Map<number, Promise<{ stop(): Promise<void> } | undefined>>();

  /** Starts consuming the shard's inbox for `processor`, once the consumer of the shard's previous processor has stopped. */
  function consumeInputs(processor: ShardProcessor) {
    const inbox = options.inbox;
    if (inbox === undefined) return;
    const shard = processor.shard;
    const previous = stopInputs(shard);
    // One consumer per processor: a consumer's refused input must not reach a later processor before the inputs behind it.
    consumers.set(
      shard,
      previous.then(() =>
        processors[shard] === processor && !closed
          ? inbox.consume(shard, async (envelope) => {
              const target = envelope.shard ?? shardFor(envelope);
              if (target !== shard)
                throw new InvalidInputError(
                  `message ${envelope.id} for ${envelope.target?.type}/${envelope.target?.key} belongs to shard ${target}, not ${shard}`,
                );
              return router.submitInput(processor, envelope);
            })
          : undefined,
      ),
    );
  }

  function stopInputs(shard: number): Promise<void> {
    const consumer = consumers.get(shard);
    consumers.delete(shard);
    return consumer?.then((c) => c?.stop()) ?? Promise.resolve();
  }

  function processorFor(shard: number): ShardProcessor {
    const processor = processors[shard];
    if (processor === undefined) throw new ShardUnavailableError(`shard ${shard} is not open on this node (starting or recovering)`);
    return processor;
  }

  function shardFor(envelope: Envelope): number {
    const target = envelope.target;
    if (target === undefined) throw new Error("envelope has no target");
    const registered = functions.get(target.type);
    // Stateless functions have no instance to serialize on: spread by message id.
    if (registered !== undefined && registered.fn.state === undefined && target.key === "")
      return shardOf(target.type, envelope.id, shards);
    return shardOf(target.type, target.key, shards);
  }

  // Only nodes with others to ask search beyond their own wait-for graph.
  const probeCycle =
    options.transport === undefined
      ? undefined
      : createCycleProbe({
          waitsOf: (instance) => router.waitsOf(instance),
          breakCycle: (instance, callee, cycle) => router.breakCycle(instance, callee, cycle),
          logger,
        });
  const host: ShardHost = {
    nodeId,
    clock,
    shards,
    slots: createSemaphore(options.maxConcurrentInvocations ?? defaults.maxConcurrentInvocations),
    retry,
    memoRetentionMs: options.memoRetentionMs ?? defaults.memoRetentionMs,
    instanceCache: createInstanceCache({
      size: options.instanceCacheSize ?? defaults.instanceCacheSize,
      idleMs: options.instanceIdleMs ?? defaults.instanceIdleMs,
      now: () => clock.now(),
    }),
    logger,
    metrics,
    callCycles,
    invokeTimeoutMs: options.invokeTimeoutMs ?? defaults.invokeTimeoutMs,
    callResendMs: options.callResendMs ?? defaults.callResendMs,
    invokerFor: (type) => remoteInvokers.get(type),
    invocationLogger: (fields) => toShoalLogger(pinoLogger.child(fields)),
    lookup: (name) => functions.get(name),
    shardOf: (type, key) => shardOf(type, key, shards),
    shardFor,
    call(envelope) {
      const target = envelope.target;
      if (target === undefined || !functions.get(target.type)?.fn.handlers.has(envelope.handler)) {
        return Promise.resolve(errorReply(Code.Unimplemented, `unknown function or handler ${target?.type ?? "?"}.${envelope.handler}`));
      }
      return runtime.request(envelope).then((answer) => answer.reply);
    },
    heldCall: (envelope) => router.heldCall(envelope),
    probeCycle: probeCycle && ((from, to) => void probeCycle(from, to)),
    withdrawCall: (call) => router.withdrawCall(call),
    deliver(envelope) {
      const target = envelope.target;
      if (target === undefined) return Promise.reject(new Error(`outbox envelope ${envelope.id} has no target`));
      if (envelope.handler !== controlHandlers.callResult && envelope.handler !== controlHandlers.cancel && !functions.has(target.type)) {
        logger.warn(`message ${envelope.id} is for ${target.type}, which this node does not run; it is answered Unimplemented`);
      }
      return router.route(envelope, "deliver");
    },
    reply: (address, outcome, output) => router.reply(address, outcome, output),
    shardMoved(processor, error) {
      if (processors[processor.shard] !== processor) return;
      logger.info(`shard ${processor.shard}: another node took it over; its requests here are answered Unavailable`, {
        error: error.message,
      });
      void forget(processor.shard);
      void processor.close();
    },
    hasEgress: (name) => egressNamed(name) !== undefined,
    emitEgress(message: EgressMessage) {
      const target = egressNamed(message.egress);
      if (target === undefined) return Promise.reject(new Error(`no egress named "${message.egress}" is configured`));
      return target.deliver(message);
    },
    storageFailed(shard, error) {
      logger.error(`shard ${shard}: storage failed; requests to it fail with Unavailable until it is recovered`, {
        error: error instanceof Error ? error.message : String(error),
      });
      processors[shard] = undefined;
      void stopInputs(shard);
      if (ownership.owns(shard)) void recoverShard(shard);
    },
  };

  async function openShard(shard: number): Promise<ShardProcessor> {
    const store = await options.storage.openShard(shard, nodeId);
    return new ShardProcessor(shard, store, host);
  }

  async function recoverShard(shard: number) {
    if (recovering.has(shard)) return;
    recovering.add(shard);
    try {
      for (let attempt = 1; !closed; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, Math.min(5_000, 200 * attempt)));
        if (closed || !ownership.owns(shard)) return;
        try {
          const processor = await openShard(shard);
          processors[shard] = processor;
          processor.start();
          consumeInputs(processor);
          logger.info(`shard ${shard}: recovered from storage`);
          return;
        } catch (err) {
          logger.error(`shard ${shard}: recovery attempt ${attempt} failed`, { error: String(err) });
        }
      }
    } finally {
      recovering.delete(shard);
    }
  }

  /** This node no longer has the shard: route its messages to whoever does. */
  function forget(shard: number): Promise<void> {
    processors[shard] = undefined;
    ownership.release(shard);
    options.directory?.setOwner(shard, undefined, nodeId);
    return stopInputs(shard);
  }

  async function acquire(shard: number) {
    if (closed) throw new ShardUnavailableError(`node ${nodeId} is closed; it takes no shard`);
    if (processors[shard] !== undefined) return;
    const processor = await openShard(shard);
    if (closed) {
      await processor.close();
      throw new ShardUnavailableError(`node ${nodeId} closed while it took shard ${shard} over`);
    }
    processors[shard] = processor;
    ownership.acquire(shard);
    options.directory?.setOwner(shard, nodeId);
    processor.start();
    consumeInputs(processor);
  }

  function allInstances(typeName: string): Array<{ key: string; state: Uint8Array }> {
    const out: Array<{ key: string; state: Uint8Array }> = [];
    for (const p of processors) {
      let after: string | undefined;
      do {
        const page = p?.listInstances(typeName, { after, limit: 1_000 });
        out.push(...(page?.instances ?? []));
        after = page?.next;
      } while (after !== undefined);
    }
    return out;
  }

  const runtime: NodeRuntime = {
    nodeId,
    ownership,
    shards,
    functions,
    clock,
    logger,
    maxRequestBytes: options.maxRequestBytes ?? defaults.ingress.maxRequestBytes,
    ignoreUnknownJsonFields: options.ignoreUnknownJsonFields ?? defaults.ingress.ignoreUnknownJsonFields,
    async metrics() {
      const registry = host.metrics.registry;
      return { contentType: registry.contentType, text: await registry.metrics() };
    },
    health() {
      const owned = ownership.owned();
      const unavailable = owned.filter((shard) => {
        const processor = processors[shard];
        return processor === undefined || processor.stats().failed !== undefined;
      }).length;
      return assessHealth({ owned: owned.length, unavailable, connection: options.storage.connection?.() });
    },
    start() {
      started ??= (async () => {
        detach = options.transport?.attach(nodeId, router.endpoint);
        const opened: ShardProcessor[] = [];
        for (const shard of ownership.owned()) {
          if (shard >= shards) throw new Error(`ownership names shard ${shard}, but the node has ${shards} shards (0 to ${shards - 1})`);
          opened.push(await openShard(shard));
        }
        // Every shard is recovered before any resumes, so redelivered outbox
        // entries and call results find their receivers' state complete.
        for (const p of opened) {
          processors[p.shard] = p;
          options.directory?.setOwner(p.shard, nodeId);
        }
        for (const p of opened) p.resumeDeliveries();
        for (const p of opened) p.resumeProcessing();
        for (const p of opened) consumeInputs(p);
        maintenance = setInterval(() => {
          host.instanceCache.sweep();
          for (const p of processors) p?.maintain();
        }, maintenanceMs);
        maintenance.unref();
      })();
      return started;
    },
    request(envelope, decodedRequest): Promise<Answer> {
      const refused = refuseUnstorable(envelope);
      if (refused !== undefined) return Promise.reject(refused);
      const address = replyAddressOf(envelope, nodeId);
      if (address.node !== nodeId)
        return Promise.reject(new Error(`request ${envelope.id} names node ${address.node} for its reply, not this node (${nodeId})`));
      // Registered before it leaves: a reply may come back before route resolves.
      const waiting = replies.expect(address.request);
      router
        .route(envelope, "request", decodedRequest)
        .catch((err: unknown) => waiting.cancel(err instanceof Error ? err : new Error(String(err))));
      return waiting.answer;
    },
    accept(envelope) {
      const refused = refuseUnstorable(envelope);
      if (refused !== undefined) return Promise.reject(refused);
      return router.route(envelope, "accept");
    },
    acquireShard(shard) {
      if (!Number.isInteger(shard) || shard < 0 || shard >= shards)
        return Promise.reject(new Error(`shard must be an integer from 0 to ${shards - 1}, got ${shard}`));
      let pending = acquiring.get(shard);
      if (pending === undefined) {
        pending = acquire(shard).finally(() => acquiring.delete(shard));
        acquiring.set(shard, pending);
      }
      return pending;
    },
    async releaseShard(shard) {
      await acquiring.get(shard)?.catch(() => {});
      const processor = processors[shard];
      await forget(shard);
      await processor?.close();
    },
    stateOf(fn, key) {
      const processor = processorFor(shardOf(fn.typeName, key, shards));
      const bytes = processor.stateOf(fn.typeName, key);
      if (bytes === undefined || fn.state === undefined) return undefined;
      return fromBinary(fn.state, bytes) as Message as never;
    },
    stateBytesOf: (typeName, key) => processorFor(shardOf(typeName, key, shards)).stateOf(typeName, key),
    keysOf: (typeName) => allInstances(typeName).map((i) => i.key),
    instancesOf(fn) {
      const schema = fn.state;
      if (schema === undefined) return [];
      return allInstances(fn.typeName).map(({ key, state }) => ({ key, state: fromBinary(schema, state) as never }));
    },
    status: () => processors.flatMap((p) => (p === undefined ? [] : [p.stats()])),
    deadLetters: () => processors.flatMap((p) => (p === undefined ? [] : p.deadLetters().map((letter) => ({ shard: p.shard, letter })))),
    storageStats: () => options.storage.stats?.(),
    storageConnection: () => options.storage.connection?.(),
    appendStats: () => options.storage.appendStats?.(),
    backup: (directory) => options.storage.backup?.(directory) ?? Promise.resolve(undefined),
    listInstances: (typeName, request) =>
      mergeInstancePages(
        processors.flatMap((p) => (p === undefined ? [] : [p.listInstances(typeName, request)])),
        request.limit,
      ),
    async whenIdle() {
      await Promise.all(processors.map((p) => p?.whenIdle()));
    },
    async close() {
      closed = true;
      await started?.catch(() => {});
      clearInterval(maintenance);
      detach?.();
      await Promise.all([...acquiring.values()].map((p) => p.catch(() => {})));
      // Before the processors close: what a consumer submitted is acknowledged only once durable.
      await Promise.all([...consumers.keys()].map(stopInputs));
      await Promise.all(processors.map((p) => p?.close()));
      replies.failAll(new ShardUnavailableError(`node ${nodeId} is closing; the reply is unknown (retry with the same Idempotency-Key)`));
      for (const invoker of new Set(remoteInvokers.values())) invoker.close();
      if (options.closeStorage ?? true) await options.storage.close();
      pinoLogger.flush?.();
    },
  };
  return runtime;
}

/** Why a message from outside cannot be accepted (its instance could never be stored), or undefined. */
function refuseUnstorable(envelope: Envelope): RecordEncodingError | undefined {
  const target = envelope.target;
  const problem = target !== undefined ? instanceKeyTooLong(target.type, target.key) : undefined;
  return problem !== undefined ? new RecordEncodingError(problem) : undefined;
}
