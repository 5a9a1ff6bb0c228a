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
import { createPinoLogger, type LogLevel, toShoalLogger } from "../observe/logger.js";
import { createRuntimeMetrics } from "../observe/metrics.js";
import { shardOf } from "../protocol/shard-hash.js";
import { type Clock, systemClock } from "../shard/clock.js";
import { createSemaphore } from "../shard/semaphore.js";
import {
  type RegisteredFunction,
  type RetryPolicy,
  type ShardHost,
  ShardProcessor,
  ShardUnavailableError,
} from "../shard/shard-processor.js";
import { controlHandlers } from "../shard/shard-state.js";
import type { StorageBackend } from "../storage/storage.js";
import { allShards, type ShardOwnership } from "./ownership.js";
import { type Answer, createReplyChannel } from "./reply-channel.js";
import { createRouter, type NodeTransport, replyAddressOf, type ShardDirectory } from "./router.js";

export type { Answer } from "./reply-channel.js";

/** How often idle shards are asked whether a snapshot is due by bytes or age. */
const snapshotCheckMs = 1_000;

/** Options of `createRuntime` and `createNodeRuntime`. */
export interface RuntimeOptions {
  /** The functions this node runs: a module or implementations. */
  readonly functions: ShoalModule | readonly Implementation[];
  /** Where shards keep their logs and snapshots (`createLocalStorage`, or `createMemoryStorage` in tests). */
  readonly storage: StorageBackend;
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
  /** Records after which a shard writes a snapshot. Default 10 000. */
  readonly snapshotEvery?: number;
  /**
   * Bytes of log the node may write after a shard's oldest record that no
   * snapshot covers before that shard writes a snapshot. This bounds the log
   * on disk (to about this plus one segment), and so the time a restart
   * takes, whatever the number of shards. Default 32 MiB.
   */
  readonly snapshotLogBytes?: number;
  /** Age of a shard's oldest record that no snapshot covers at which it writes one, in ms. Default 10 minutes. */
  readonly snapshotAfterMs?: number;
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
  const router = createRouter({
    nodeId,
    processorOf: (shard) => processors[shard],
    shardFor,
    directory: options.directory,
    transport: options.transport,
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
  let snapshotChecks: NodeJS.Timeout | undefined;

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

  const host: ShardHost = {
    nodeId,
    clock,
    shards,
    slots: createSemaphore(options.maxConcurrentInvocations ?? defaults.maxConcurrentInvocations),
    retry,
    memoRetentionMs: options.memoRetentionMs ?? defaults.memoRetentionMs,
    snapshotEvery: options.snapshotEvery ?? defaults.snapshotEvery,
    snapshotLogBytes: options.snapshotLogBytes ?? defaults.snapshotLogBytes,
    snapshotAfterMs: options.snapshotAfterMs ?? defaults.snapshotAfterMs,
    logBytesWritten: () => options.storage.stats?.().bytes ?? 0,
    logger,
    metrics: createRuntimeMetrics({
      shardStats: () => runtime.status(),
      storageStats: () => options.storage.stats?.(),
    }),
    callCycles: new CallCycles(),
    invokeTimeoutMs: options.invokeTimeoutMs ?? defaults.invokeTimeoutMs,
    invocationLogger: (fields) => toShoalLogger(pinoLogger.child(fields)),
    lookup: (name) => functions.get(name),
    shardOf: (type, key) => shardOf(type, key, shards),
    call(envelope) {
      const target = envelope.target;
      if (target === undefined || !functions.get(target.type)?.fn.handlers.has(envelope.handler)) {
        return Promise.resolve(errorReply(Code.Unimplemented, `unknown function or handler ${target?.type ?? "?"}.${envelope.handler}`));
      }
      return runtime.request(envelope).then((answer) => answer.reply);
    },
    heldCall: (envelope) => processorFor(shardFor(envelope)).heldCall(envelope),
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
      forget(processor.shard);
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
      if (ownership.owns(shard)) void recoverShard(shard);
    },
  };

  async function openShard(shard: number): Promise<ShardProcessor> {
    const log = await options.storage.openShard(shard, nodeId);
    const processor = new ShardProcessor(shard, log, host);
    await processor.recover();
    return processor;
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
  function forget(shard: number) {
    processors[shard] = undefined;
    ownership.release(shard);
    options.directory?.setOwner(shard, undefined, nodeId);
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
        // A shard that stopped appending still pins the log its records are in.
        snapshotChecks = setInterval(() => {
          for (const p of processors) p?.snapshotIfDue();
        }, snapshotCheckMs);
        snapshotChecks.unref();
      })();
      return started;
    },
    request(envelope, decodedRequest): Promise<Answer> {
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
      forget(shard);
      await processor?.close();
    },
    stateOf(fn, key) {
      const processor = processorFor(shardOf(fn.typeName, key, shards));
      const bytes = processor.stateOf(fn.typeName, key);
      if (bytes === undefined || fn.state === undefined) return undefined;
      return fromBinary(fn.state, bytes) as Message as never;
    },
    stateBytesOf: (typeName, key) => processorFor(shardOf(typeName, key, shards)).stateOf(typeName, key),
    keysOf: (typeName) => processors.flatMap((p) => (p === undefined ? [] : p.instancesOf(typeName).map((i) => i.key))),
    instancesOf(fn) {
      const out: Array<{ key: string; state: never }> = [];
      for (const p of processors) {
        if (p === undefined || fn.state === undefined) continue;
        for (const { key, state } of p.instancesOf(fn.typeName)) out.push({ key, state: fromBinary(fn.state, state) as never });
      }
      return out;
    },
    status: () => processors.flatMap((p) => (p === undefined ? [] : [p.stats()])),
    deadLetters: () => processors.flatMap((p) => (p === undefined ? [] : p.deadLetters().map((letter) => ({ shard: p.shard, letter })))),
    storageStats: () => options.storage.stats?.(),
    async whenIdle() {
      await Promise.all(processors.map((p) => p?.whenIdle()));
    },
    async close() {
      closed = true;
      await started?.catch(() => {});
      clearInterval(snapshotChecks);
      detach?.();
      await Promise.all([...acquiring.values()].map((p) => p.catch(() => {})));
      await Promise.all(processors.map((p) => p?.close()));
      replies.failAll(new ShardUnavailableError(`node ${nodeId} is closing; the reply is unknown (retry with the same Idempotency-Key)`));
      if (options.closeStorage ?? true) await options.storage.close();
      pinoLogger.flush?.();
    },
  };
  return runtime;
}
