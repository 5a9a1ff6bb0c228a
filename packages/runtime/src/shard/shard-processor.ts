import { create, fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { Address, Logger } from "@shoal/sdk";
import {
  type CallResult,
  CallResultInputSchema,
  CallResultSchema,
  type Commit,
  CommitSchema,
  type DeadLetter,
  type EgressMessage,
  type Envelope,
  EnvelopeSchema,
  errorReply,
  type LogRecord,
  LogRecordSchema,
  memoIdOf,
  type Reply,
  requestHash,
  resentCallResultId,
  sameBytes,
} from "@shoal/sdk/internal";
import type { CallCycles } from "../invoker/call-cycles.js";
import { createDeadlines, type Deadlines } from "../invoker/deadlines.js";
import { createEmbeddedInvoker, type RegisteredFunction } from "../invoker/embedded-invoker.js";
import type { AwaitedCall, InvokeMessage, InvokeRequest, Invoker, MessageOutcome } from "../invoker/invoker.js";
import { checkInvokeResponse } from "../invoker/response-check.js";
import { lazyLogger } from "../observe/logger.js";
import type { RuntimeMetrics } from "../observe/metrics.js";
import type { ShardStore, WriteResult } from "../storage/shard-store.js";
import { instanceKeyTooLong } from "../storage/shard-tables.js";
import { FencedError, RecordEncodingError } from "../storage/storage.js";
import type { Clock } from "./clock.js";
import { buildCommit, callResultEnvelope, envelopeHash, type PendingEffects, pendingEffects } from "./commit-builder.js";
import { createDeliveries, type Deliveries } from "./deliveries.js";
import { createExpiry, type Expiry } from "./expiry.js";
import type { InstanceCache } from "./instance-cache.js";
import { createMailboxes, type Mailboxes } from "./mailboxes.js";
import { createSlot, type Semaphore, type Slot } from "./semaphore.js";
import { controlHandlers, instanceKey, ShardState } from "./shard-state.js";

export type { RegisteredFunction } from "../invoker/embedded-invoker.js";

/** How transient handler failures are retried. */
export interface RetryPolicy {
  /** Attempts in all, the first included. Default 5. */
  readonly maxAttempts: number;
  /** Delay before the second attempt; doubles each time. Default 100 ms. */
  readonly initialDelayMs: number;
  /** Upper bound of the delay. Default 5 s. */
  readonly maxDelayMs: number;
}

/** What a shard processor needs from the node it runs on. */
export interface ShardHost {
  readonly nodeId: string;
  readonly clock: Clock;
  readonly shards: number;
  readonly slots: Semaphore;
  readonly retry: RetryPolicy;
  readonly memoRetentionMs: number;
  /** The node's decoded instances (passivation): shards read an instance from their store when it is not there. */
  readonly instanceCache: InstanceCache;
  readonly logger: Logger;
  readonly metrics: RuntimeMetrics;
  /** The node's call-cycle detector: which locked instance awaits calls to which. */
  readonly callCycles: CallCycles;
  /** Runs handlers; default: in this process (the embedded invoker). */
  readonly invoker?: Invoker;
  /**
   * The invoker of a function type whose handlers run elsewhere (a remote
   * endpoint), instead of `invoker`; `maxBatch`: queued messages of one
   * instance it takes per request (default 1).
   */
  invokerFor?(type: string): (Invoker & { readonly maxBatch?: number }) | undefined;
  /** Time an invoker has to answer one invocation before it is abandoned and retried, in ms. */
  readonly invokeTimeoutMs: number;
  /** How long an invocation awaits its calls' results before it sends the calls again, in ms (`defaults.callResendMs`). */
  readonly callResendMs?: number;
  invocationLogger(fields: Record<string, unknown>): Logger;
  lookup(typeName: string): RegisteredFunction | undefined;
  shardOf(type: string, key: string): number;
  /** The shard a message goes to when its envelope names none (the router's choice). */
  shardFor(envelope: Envelope): number;
  /**
   * Runs a call at its target and resolves with the callee's committed reply;
   * rejects when that reply cannot be had now (the callee's shard is shutting
   * down, failed or not open), which never means the callee did not commit.
   */
  call(envelope: Envelope): Promise<Reply>;
  /**
   * What the callee's shard holds for a call: its kept reply, or the call
   * still to run. Throws ShardUnavailableError when the shard is not open.
   */
  heldCall(envelope: Envelope): HeldCall | Promise<HeldCall>;
  /**
   * Searches the wait-for graphs of the other nodes for a cycle that a call
   * from locked `from` to locked `to`, just delivered, closes (two chains
   * crossing between nodes), and breaks it. Optional: without it only this
   * node's graph is searched, when the call is made.
   */
  probeCycle?(from: string, to: string): void;
  /**
   * Takes a call back from its callee's shard, here or at its owner, if it
   * has not started there (`ShardProcessor.withdrawCall`): whether it did.
   */
  withdrawCall?(call: Envelope): Promise<boolean>;
  /** Hands an outbox envelope to its target shard; resolves once the target has it durably. */
  deliver(envelope: Envelope): Promise<void>;
  /** Whether an egress of this name is configured. */
  hasEgress(name: string): boolean;
  /** Hands a committed egress message to its egress; resolves once delivered. */
  emitEgress(message: EgressMessage): Promise<void>;
  /** Storage failed under this shard: it stops and the node recovers it. */
  storageFailed(shard: number, error: unknown): void;
  /**
   * Sends a reply to the address a request named (`replyTo`): the node's reply
   * channel takes it to the node that awaits it, this one or another. A
   * `ShardUnavailableError` is made up by the runtime, never committed: the
   * reply is unknown and the sender retries.
   */
  reply(address: ReplyAddress, outcome: Reply | ShardUnavailableError, output?: Message): void;
  /**
   * A newer owner opened this shard (its appends were refused with
   * `FencedError`): the shard moved. The processor has stopped; the node
   * forgets it and does not recover it.
   */
  shardMoved(processor: ShardProcessor, error: FencedError): void;
}

/**
 * Where the reply of an accepted message goes: the node awaiting it and its
 * request id there (`ReplyTo.ingress`, or a call's node and call id). It gets
 * the reply once the commit is durable, or a ShardUnavailableError when the
 * shard stops or gives up the message before it commits: then the reply is
 * unknown, and the sender retries.
 */
export interface ReplyAddress {
  readonly node: string;
  readonly request: string;
}

/** What an instance's mailbox runs: a message, or the expiry of its state. */
type MailboxItem =
  | { readonly kind: "message"; readonly envelope: Envelope }
  | { readonly kind: "expire"; readonly type: string; readonly key: string };

/**
 * The answer made up for a call that is refused before it leaves (never
 * committed): one that would close a call cycle (FailedPrecondition), one to
 * an instance that could never be stored (InvalidArgument).
 */
function refusedCallAnswer(call: Pick<Envelope, "callId" | "target" | "handler" | "payload">, code: Code, why: string): CallResult {
  return create(CallResultSchema, {
    callId: call.callId,
    target: call.target,
    handler: call.handler,
    requestHash: requestHash(call.payload),
    reply: errorReply(code, why),
  });
}

/** What a shard holds for a call: its kept reply, the call still to run there, or nothing. */
export type HeldCall = "kept" | "inflight" | undefined;

/**
 * The shard cannot accept a message or cannot get a reply now; nothing was
 * committed for it by the runtime, so a retry (same key or call id) is safe.
 */
export class ShardUnavailableError extends Error {
  override name = "ShardUnavailableError";
}

/**
 * Processes one shard: accepts messages into its log, runs invocations (one
 * at a time per instance for exclusive handlers), appends their effects as one
 * commit each, and releases replies, outbox deliveries and egress only once
 * that commit is durable.
 */
export class ShardProcessor {
  private state: ShardState;
  private readonly mailboxes: Mailboxes<MailboxItem>;
  private readonly waiters = new Map<string, ReplyAddress[]>();
  /**
   * Requests whose sender awaits the reply (ingress requests, calls) are not
   * logged on arrival: only their commit is. If the node dies first, the
   * sender sees an error and retries (with its idempotency key or call id),
   * so logging them would cost a record per request and buy nothing.
   */
  private readonly volatile = new Map<string, Envelope>();
  /** Requests the ingress decoded already: the handler gets them as they are. */
  private readonly decodedRequests = new WeakMap<Envelope, Message>();
  /** Memo id -> id of the pending message that will produce it. */
  private readonly inflight = new Map<string, string>();
  private readonly timers = new Map<string, () => void>();
  private readonly expiry: Expiry;
  private readonly deliveries: Deliveries;
  /** Journal (invocation id) -> when a sweep first found its invocation neither pending nor in flight. */
  private readonly orphanedSince = new Map<string, number>();
  /** Suspended invocation id -> the calls whose results it awaits, and how to wake it (with an error: stop). */
  private readonly awaiting = new Map<
    string,
    {
      readonly callIds: readonly string[];
      readonly wake: (stopped?: Error) => void;
      /** The instance it holds locked while it waits (undefined: it holds no lock), and the calls it sent. */
      readonly locked?: string;
      readonly calls: readonly Envelope[];
    }
  >();
  /**
   * Invocation id -> answers the runtime made up for its calls (a cycle):
   * given to its re-runs, never committed (only a callee's reply is final).
   */
  private readonly madeUp = new Map<string, CallResult[]>();
  private readonly invoker: Invoker;
  /** Invoke timeouts (`invokeTimeoutMs`), all on one timer. */
  private readonly deadlines: Deadlines;
  /**
   * Outcomes an invoker gave for messages sent along in a batch behind the one
   * it was asked to run, by message id: each is used when its message's turn
   * comes if the instance's state and the message's journal are then what the
   * invoker ran it on (everything before it committed as answered); otherwise
   * it is dropped and the message runs again.
   */
  private readonly ranAhead = new Map<
    string,
    { readonly state: Uint8Array | undefined; readonly journal: number; readonly outcome: MessageOutcome }
  >();
  /** Commits appended and not yet released (durable), so that `whenIdle` covers what they release. */
  private readonly releasing = new Set<Promise<void>>();
  /**
   * Clock ms up to which the store's expiry index was read into timers: an
   * expiry further out waits in the index for a later sweep (a write of this
   * process arms its own timer).
   */
  private expiryArmedUpTo: number | undefined;
  private journalsSweptAtMs = Number.NEGATIVE_INFINITY;
  private failed: Error | undefined;
  private closed = false;

  constructor(
    readonly shard: number,
    private readonly store: ShardStore,
    private readonly host: ShardHost,
  ) {
    this.state = ShardState.open(store, host.instanceCache);
    this.invoker = host.invoker ?? createEmbeddedInvoker(host);
    this.deadlines = createDeadlines(host.invokeTimeoutMs);
    const stopped = () => this.failed !== undefined || this.closed;
    const append = (records: LogRecord[]) => this.append(records);
    this.mailboxes = createMailboxes<MailboxItem>({
      run: (item) => {
        if (item.kind === "message") return this.invoke(item.envelope);
        this.expiry.expire(item.type, item.key);
        return undefined;
      },
      stopped,
    });
    // What an earlier processor of this shard cached may predate another owner's writes.
    host.instanceCache.attach(shard, undefined);
    // An instance whose mailbox is busy stays decoded: its next item needs it.
    host.instanceCache.attach(shard, (key) => this.mailboxes.busy(key));
    this.expiry = createExpiry({
      clock: host.clock,
      instance: (type, key) => this.state.instance(type, key),
      due: (type, key) => this.mailboxes.enqueue(instanceKey(type, key), { kind: "expire", type, key }),
      append,
    });
    this.deliveries = createDeliveries({
      shard,
      logger: host.logger,
      deliver: (envelope) => host.deliver(envelope),
      targetShard: (envelope) => envelope.shard ?? host.shardFor(envelope),
      emitEgress: (message) => host.emitEgress(message),
      append,
      closed: () => this.closed,
      stopped,
    });
  }

  /**
   * Accepts a message. `waiter`, if given, is the address that receives the reply once the commit
   * holding it is durable. The returned promise resolves when the message is
   * durably accepted (for one-way sends), or at once when it was a duplicate.
   */
  submit(envelope: Envelope, waiter?: ReplyAddress, decodedRequest?: Message): Promise<void> {
    if (this.failed !== undefined) throw new ShardUnavailableError(`shard ${this.shard} is unavailable: ${this.failed.message}`);
    if (this.closed) throw new ShardUnavailableError(`shard ${this.shard} is closed`);
    const memoId = memoIdOf(envelope);
    if (memoId !== undefined) {
      let memo = this.state.memo(memoId);
      const hash = envelopeHash(envelope);
      // Past its retention a memo is forgotten, even before the sweep deletes it.
      if (memo !== undefined && memo.expiresAtMs > 0n && memo.expiresAtMs < BigInt(this.host.clock.now())) memo = undefined;
      if (memo !== undefined) {
        if (!sameBytes(memo.requestHash, hash)) {
          if (waiter !== undefined) this.host.reply(waiter, this.mismatch(envelope));
        } else if (waiter !== undefined) {
          this.host.reply(waiter, memo.reply ?? errorReply(Code.Internal, "memoized reply is missing"));
        } else if (envelope.replyTo?.kind.case === "call" && memo.reply !== undefined) {
          this.resendCallResult(envelope, memo.reply);
        } else {
          this.host.logger.info(
            `shard ${this.shard}: message ${envelope.id} was committed before; its copy is dropped`,
            this.sourceFields(envelope),
          );
        }
        return Promise.resolve();
      }
      const inflightId = this.inflight.get(memoId);
      const inflight = inflightId !== undefined ? this.pendingEnvelope(inflightId) : undefined;
      if (inflight !== undefined) {
        if (!sameBytes(envelopeHash(inflight), hash)) {
          if (waiter !== undefined) this.host.reply(waiter, this.mismatch(envelope));
        } else if (waiter !== undefined) this.addWaiter(inflight.id, waiter);
        return Promise.resolve();
      }
    }
    if (this.pendingEnvelope(envelope.id) !== undefined) {
      if (waiter !== undefined) this.addWaiter(envelope.id, waiter);
      return Promise.resolve();
    }
    if (this.state.isDuplicate(envelope)) {
      this.host.logger.info(
        `shard ${this.shard}: message ${envelope.id} was taken before (by its source's sequence); its copy is dropped`,
        this.sourceFields(envelope),
      );
      return Promise.resolve();
    }
    if (waiter !== undefined) this.addWaiter(envelope.id, waiter);
    let durable: Promise<void>;
    if (waiter !== undefined && envelope.replyTo !== undefined && envelope.deliverAtMs === 0n) {
      this.volatile.set(envelope.id, envelope);
      if (decodedRequest !== undefined) this.decodedRequests.set(envelope, decodedRequest);
      durable = Promise.resolve();
    } else {
      try {
        durable = this.append([create(LogRecordSchema, { kind: { case: "input", value: { envelope } } })]);
      } catch (err) {
        // Not accepted: the sender hears why (RecordEncodingError; the shard is fine).
        if (waiter !== undefined) this.waiters.delete(envelope.id);
        throw err;
      }
    }
    if (envelope.handler === controlHandlers.cancel) {
      const target = new TextDecoder().decode(envelope.payload);
      if (!this.state.pending.has(target)) this.timers.get(target)?.();
      return durable;
    }
    if (memoId !== undefined) this.inflight.set(memoId, envelope.id);
    this.schedule(envelope);
    return durable;
  }

  /**
   * A copy of a call that committed here came again: its caller ran again (a
   * new owner of its shard, a retry after a call that seemed to fail) and may
   * not have the result, which left once through the outbox and may have been
   * lost on the way or taken by an owner that died before making it durable.
   * The kept result goes to the caller again, under a new id; best effort: a
   * later copy of the call asks again.
   */
  private resendCallResult(call: Envelope, reply: Reply) {
    const result = callResultEnvelope(call, reply);
    if (result === undefined) return;
    result.id = resentCallResultId(call.id, this.host.clock.now());
    this.host.logger.info(`shard ${this.shard}: call ${call.id} was committed before; its result is sent again`, this.sourceFields(call));
    this.host.deliver(result).catch((err: unknown) => {
      this.host.logger.warn(
        `shard ${this.shard}: sending the result of call ${call.id} again failed; a later copy of the call asks again`,
        {
          error: errorMessage(err),
        },
      );
    });
  }

  /** Where a dropped copy came from, for the log: a redelivery is rare, and a wrong drop loses a message. */
  private sourceFields(envelope: Envelope): Record<string, unknown> {
    return {
      sourceShard: envelope.source?.shard,
      sourceSequence: String(envelope.source?.sequence ?? ""),
      watermark: String(this.state.watermarkOf(envelope.source?.shard)),
    };
  }

  private mismatch(envelope: Envelope): Reply {
    if (envelope.callId !== "") {
      return errorReply(
        Code.Internal,
        `call ${envelope.callId} was made before with a different request to ${envelope.target?.type}.${envelope.handler}; handlers that await calls must be deterministic`,
      );
    }
    return errorReply(
      Code.InvalidArgument,
      `idempotency key "${envelope.idempotencyKey}" was used before with a different request to ${envelope.target?.type}.${envelope.handler}`,
    );
  }

  private addWaiter(id: string, waiter: ReplyAddress) {
    const list = this.waiters.get(id);
    if (list === undefined) this.waiters.set(id, [waiter]);
    else list.push(waiter);
  }

  /** An accepted message not consumed yet, logged or not. */
  private pendingEnvelope(id: string): Envelope | undefined {
    return this.state.pending.get(id) ?? this.volatile.get(id);
  }

  private schedule(envelope: Envelope) {
    const deliverAt = Number(envelope.deliverAtMs);
    const delay = deliverAt - this.host.clock.now();
    if (deliverAt > 0 && delay > 0) {
      const cancel = this.host.clock.schedule(delay, () => {
        this.timers.delete(envelope.id);
        if (this.state.pending.has(envelope.id)) this.dispatch(envelope);
      });
      this.timers.set(envelope.id, cancel);
      return;
    }
    this.dispatch(envelope);
  }

  private dispatch(envelope: Envelope) {
    const target = envelope.target;
    const registered = target !== undefined ? this.host.lookup(target.type) : undefined;
    const info = registered?.fn.handlers.get(envelope.handler);
    if (target === undefined || registered === undefined || info === undefined || registered.fn.state === undefined || info.shared) {
      void this.invoke(envelope);
      return;
    }
    this.mailboxes.enqueue(instanceKey(target.type, target.key), { kind: "message", envelope });
  }

  private async invoke(envelope: Envelope): Promise<void> {
    this.mailboxes.started();
    const slot = createSlot(this.host.slots);
    try {
      await slot.acquire();
      const started = performance.now();
      let outcome: Awaited<ReturnType<ShardProcessor["execute"]>>;
      try {
        outcome = await this.execute(envelope, slot);
      } catch (err) {
        // A bug or a failure outside the handler: it fails this message, never the shard or the node.
        outcome = {
          reply: errorReply(Code.Internal, `${describe(envelope)}: the invocation failed: ${errorMessage(err)}`),
          commit: { finishedInvocations: [envelope.id], deadLetter: true },
        };
      }
      if ("interrupted" in outcome) {
        this.interrupt(envelope, outcome.interrupted);
        return;
      }
      const failure = outcome.reply.result.case === "error" ? outcome.reply.result.value : undefined;
      this.host.metrics.invocationFinished(
        envelope.target?.type ?? "",
        envelope.handler,
        failure === undefined ? "ok" : (Code[failure.code] ?? String(failure.code)),
        (performance.now() - started) / 1000,
      );
      if (this.failed !== undefined || this.closed) return;
      if (this.pendingEnvelope(envelope.id) === undefined) return;
      this.commitOutcome(envelope, outcome.reply, outcome.commit, outcome.output);
    } catch (err) {
      // Never reaches the mailbox's pump, which would stop, nor the process.
      this.host.logger.error(`shard ${this.shard}: ${describe(envelope)}: committing message ${envelope.id} failed`, {
        error: errorMessage(err),
      });
    } finally {
      slot.release();
      this.mailboxes.finished();
    }
  }

  /** Runs the handler, retrying transient failures, and builds the commit (or nothing, when interrupted). */
  private async execute(
    envelope: Envelope,
    slot: Slot,
  ): Promise<{ reply: Reply; commit: PendingEffects; output?: Message } | { interrupted: unknown }> {
    const target = envelope.target;
    const registered = target !== undefined ? this.host.lookup(target.type) : undefined;
    const info = registered?.fn.handlers.get(envelope.handler);
    if (target === undefined || registered === undefined || info === undefined) {
      return {
        reply: errorReply(Code.Unimplemented, `unknown function or handler ${target?.type ?? "?"}.${envelope.handler}`),
        commit: {},
      };
    }
    const { fn } = registered;
    const self = { type: target.type, key: target.key };
    const log = lazyLogger(() =>
      this.host.invocationLogger({ function: fn.typeName, key: target.key, handler: info.name, invocation: envelope.id }),
    );
    const locked = fn.state !== undefined && !info.shared;
    const { maxAttempts, initialDelayMs, maxDelayMs } = this.host.retry;
    let outcome: Extract<MessageOutcome, { status: "done" }>;
    for (let attempt = 1; ; attempt++) {
      const step = await this.invokeOnce(envelope, self, fn.state !== undefined, locked, log);
      let failure: unknown;
      if (step.status === "done") {
        outcome = step;
        break;
      }
      if (step.status === "failed" && !step.retryable) {
        log.error("the invocation cannot be completed", { error: step.message });
        return { reply: errorReply(Code.Internal, step.message), commit: { finishedInvocations: [envelope.id], deadLetter: true } };
      }
      if (step.status === "suspended") {
        // Results in: run it again at once, a suspension is no failed attempt.
        failure = await this.awaitCalls(envelope, step.calls, locked, slot);
        if (failure === undefined) {
          attempt--;
          continue;
        }
        if (this.failed !== undefined || this.closed) return { interrupted: failure };
        // Not logged yet, so no call left: the sender retries. Logged, a call may have left and its callee may commit:
        // the invocation keeps its instance and asks again until the shard stops, for a message queued behind it must
        // not run first and change the state it decided on (see makeDurableBeforeCall; a new owner re-runs it first too).
        if (attempt >= maxAttempts && !this.state.pending.has(envelope.id)) return { interrupted: failure };
      } else {
        failure = new Error(step.message);
        if (attempt >= maxAttempts) {
          log.error(`handler failed after ${attempt} attempts`, { error: step.message });
          return {
            reply: errorReply(Code.Internal, `${fn.typeName}.${info.name} failed after ${attempt} attempts: ${step.message}`),
            commit: { finishedInvocations: [envelope.id], deadLetter: true },
          };
        }
      }
      this.host.metrics.invocationRetried(fn.typeName, info.name);
      const delay = Math.min(maxDelayMs, initialDelayMs * 2 ** (attempt - 1));
      const failed = step.status === "suspended" ? "a call got no reply" : "handler failed";
      const of = attempt < maxAttempts ? ` of ${maxAttempts}` : "; the instance stays locked until the call is answered";
      log.warn(`${failed}, retrying in ${delay} ms (attempt ${attempt}${of})`, { error: errorMessage(failure) });
      slot.release();
      await new Promise<void>((resolve) => setTimeout(resolve, delay));
      await slot.acquire();
      if (this.failed !== undefined || this.closed) return { interrupted: new ShardUnavailableError(`shard ${this.shard} stopped`) };
    }
    const effects = outcome.effects;
    const unknownEgress = effects.egress.find((e) => !this.host.hasEgress(e.egress));
    if (unknownEgress !== undefined) {
      // Committing it would keep an undeliverable message forever: fail the invocation instead.
      log.error(`no egress named "${unknownEgress.egress}" is configured`);
      return {
        reply: errorReply(
          Code.FailedPrecondition,
          `${fn.typeName}.${info.name}: no egress named "${unknownEgress.egress}" is configured (shoal.yaml egress)`,
        ),
        commit: this.state.journal(envelope.id) !== undefined ? { finishedInvocations: [envelope.id] } : {},
      };
    }
    const unstorable = effects.sends.flatMap((send) => instanceKeyTooLong(send.target.type, send.target.key) ?? []);
    if (unstorable.length > 0) {
      // Its receiver could never store it: fail the invocation, as for an unknown egress.
      log.error(`ctx.send: ${unstorable[0]}`);
      return {
        reply: errorReply(Code.InvalidArgument, `${fn.typeName}.${info.name}: ctx.send: ${unstorable[0]}`),
        commit: this.state.journal(envelope.id) !== undefined ? { finishedInvocations: [envelope.id] } : {},
      };
    }
    const commit = pendingEffects(effects, {
      envelope,
      self,
      shard: this.shard,
      nowMs: this.host.clock.now(),
      stateTtlMs: fn.stateTtlMs,
      journaled: this.state.journal(envelope.id) !== undefined,
      shardOf: (type, key) => this.host.shardOf(type, key),
      warn: (message) => log.warn(message),
    });
    return { reply: outcome.reply, commit, output: outcome.output };
  }

  /**
   * Asks the invoker to run one message, within the invoke timeout, with the
   * messages queued behind it on its (locked) instance when the invoker takes
   * batches.
   * Its answer is refused when it is for another instance or does not hold
   * one outcome per message that ran: nothing of it commits.
   */
  private async invokeOnce(envelope: Envelope, self: Address, stateful: boolean, locked: boolean, log: Logger): Promise<MessageOutcome> {
    const state = stateful ? this.state.instance(self.type, self.key)?.state : undefined;
    const journal = this.journalOf(envelope.id);
    const ahead = this.ranAhead.get(envelope.id);
    if (ahead !== undefined) {
      this.ranAhead.delete(envelope.id);
      const sameState = ahead.state === undefined || state === undefined ? ahead.state === state : sameBytes(ahead.state, state);
      if (sameState && ahead.journal === journal.length) return ahead.outcome;
    }
    const remote = this.host.invokerFor?.(self.type);
    const invoker = remote ?? this.invoker;
    const inProcess = invoker.inProcess === true;
    const message: InvokeMessage = inProcess
      ? {
          envelope,
          journal,
          decoded: this.decodedRequests.get(envelope),
          // Only an in-process ingress waiter with nothing to memoize can take the message itself.
          encodeReply: !(envelope.replyTo?.kind.case === "ingress" && memoIdOf(envelope) === undefined),
        }
      : { envelope: this.withPayload(envelope), journal };
    const request: InvokeRequest = {
      address: self,
      state,
      // Only a locked instance's own queue may ride along: it runs next, in this order.
      messages: [message, ...(locked ? this.queuedBehind(self, (remote?.maxBatch ?? 1) - 1) : [])],
    };
    const timedOut = () =>
      new Error(
        `${describe(envelope)}: the invoker did not answer within ${this.host.invokeTimeoutMs} ms (invokeTimeoutMs); the run is abandoned (raise invokeTimeoutMs if handlers need longer)`,
      );
    let response: Awaited<ReturnType<Invoker["invoke"]>>;
    try {
      response = await this.deadlines.race(invoker.invoke(request), timedOut);
    } catch (err) {
      return { status: "failed", retryable: true, message: errorMessage(err) };
    }
    const invalid = checkInvokeResponse(request, response);
    if (invalid !== undefined) {
      const message = `${describe(envelope)}: ${invalid.message}`;
      log.error(message);
      this.host.metrics.invokerRefused(self.type, envelope.handler);
      return { status: "failed", retryable: true, message };
    }
    this.keepRanAhead(request, response.outcomes);
    return response.outcomes[0] as MessageOutcome;
  }

  /**
   * Up to `max` messages queued behind the running one on an instance, in
   * order, for an invoker that takes batches; only messages, stopping at
   * anything else (an expiry changes the state they would run on).
   */
  private queuedBehind(self: Address, max: number): InvokeMessage[] {
    const out: InvokeMessage[] = [];
    if (max <= 0) return out;
    for (const item of this.mailboxes.queued(instanceKey(self.type, self.key))) {
      if (out.length >= max || item.kind !== "message") break;
      const envelope = item.envelope;
      if (this.pendingEnvelope(envelope.id) === undefined) break;
      out.push({ envelope: this.withPayload(envelope), journal: this.journalOf(envelope.id) });
    }
    return out;
  }

  /** Keeps the outcomes of the messages sent along behind the first, with the state and journal each ran on. */
  private keepRanAhead(request: InvokeRequest, outcomes: readonly MessageOutcome[]) {
    let state = request.state;
    for (let i = 1; i < outcomes.length; i++) {
      const previous = outcomes[i - 1];
      if (previous?.status === "done") {
        const change = previous.effects.state;
        state = change.kind === "write" ? change.bytes : change.kind === "clear" ? undefined : state;
      }
      const message = request.messages[i];
      const outcome = outcomes[i];
      if (message === undefined || outcome === undefined) break;
      this.ranAhead.set(message.envelope.id, { state, journal: message.journal.length, outcome });
    }
  }

  /** The call results an invocation has so far: its journal and the answers made up for it, in call order. */
  private journalOf(invocationId: string): CallResult[] {
    const journal = [...(this.state.journal(invocationId) ?? []), ...(this.madeUp.get(invocationId) ?? [])];
    const index = (r: CallResult) => Number(r.callId.slice(r.callId.lastIndexOf("/") + 1));
    if (journal.length > 1) journal.sort((a, b) => index(a) - index(b));
    return journal;
  }

  /** The envelope with its request's bytes (an ingress request travels decoded). */
  private withPayload(envelope: Envelope): Envelope {
    return envelope.payload.length > 0 || !this.decodedRequests.has(envelope)
      ? envelope
      : { ...envelope, payload: this.requestBytes(envelope) };
  }

  /**
   * Sends the calls a suspended invocation awaits, as messages, and waits
   * until all their results are in its journal (undefined), or returns why
   * they will not come now (nothing committed: the invocation is interrupted).
   * The instance stays locked meanwhile; the slot is given back, the callee
   * may need one.
   */
  private async awaitCalls(envelope: Envelope, calls: readonly AwaitedCall[], locked: boolean, slot: Slot): Promise<unknown> {
    const target = envelope.target ?? { type: "", key: "" };
    const selfId = `${target.type}/${target.key}`;
    const chain = envelope.callChain;
    const now = this.host.clock.now();
    const edges: Array<() => void> = [];
    const outgoing: Envelope[] = [];
    const probed: string[] = [];
    try {
      for (const call of calls) {
        const targetId = `${call.target.type}/${call.target.key}`;
        const callee = this.host.lookup(call.target.type);
        const targetLocks = callee?.fn.state !== undefined && !(callee.fn.handlers.get(call.handler)?.shared ?? false);
        const callEnvelope = create(EnvelopeSchema, {
          id: call.callId,
          target: call.target,
          handler: call.handler,
          payload: call.payload,
          callId: call.callId,
          caller: target,
          replyTo: {
            kind: { case: "call", value: { caller: target, invocationId: envelope.id, node: this.host.nodeId, shard: this.shard } },
          },
          callChain: locked ? [...chain, selfId] : chain,
          traceparent: envelope.traceparent,
          acceptedAtMs: BigInt(now),
        });
        const tooLong = instanceKeyTooLong(call.target.type, call.target.key);
        if (tooLong !== undefined) {
          this.madeUp.set(envelope.id, [
            ...(this.madeUp.get(envelope.id) ?? []),
            refusedCallAnswer(callEnvelope, Code.InvalidArgument, `ctx.call: ${tooLong}`),
          ]);
          continue;
        }
        const cycle = targetLocks ? this.host.callCycles.find(chain, selfId, targetId, locked) : undefined;
        if (cycle !== undefined) {
          // A re-run may re-issue a call its callee has answered already:
          // only that answer is final. A cycle answer is final only if the
          // callee holds nothing for this call id, so it can never commit it.
          const held = await this.host.heldCall(callEnvelope);
          if (held === "inflight") {
            // Sent by an earlier run of this invocation and queued there behind the lock this cycle holds: taken
            // back (refused there, durably) if it has not started, or both sides would wait for ever.
            if (this.host.withdrawCall === undefined || !(await this.host.withdrawCall(callEnvelope)))
              throw new ShardUnavailableError(`call ${call.callId} to ${targetId} is still to run there, behind this locked instance`);
            this.madeUp.set(envelope.id, [
              ...(this.madeUp.get(envelope.id) ?? []),
              refusedCallAnswer(callEnvelope, Code.FailedPrecondition, cycle),
            ]);
            continue;
          }
          if (held === undefined) {
            // Recorded at the callee first: in a cluster an earlier copy of this call (sent before a retry, or by the
            // resend) may still be on its way there, and it then gets this answer instead of running.
            if (this.host.withdrawCall !== undefined && !(await this.host.withdrawCall(callEnvelope)))
              throw new ShardUnavailableError(
                `call ${call.callId} to ${targetId} closes a call cycle but its callee could not refuse it yet`,
              );
            this.madeUp.set(envelope.id, [
              ...(this.madeUp.get(envelope.id) ?? []),
              refusedCallAnswer(callEnvelope, Code.FailedPrecondition, cycle),
            ]);
            continue;
          }
          // Kept: the callee's shard answers from its memo without waiting for its lock.
        } else if (locked && targetLocks) {
          edges.push(this.host.callCycles.wait(selfId, targetId));
          probed.push(targetId);
        }
        outgoing.push(callEnvelope);
      }
      if (outgoing.length === 0) return undefined;
      const callIds = outgoing.map((e) => e.callId);
      const answered = new Promise<Error | undefined>((resolve) =>
        this.awaiting.set(envelope.id, { callIds, wake: resolve, locked: locked ? selfId : undefined, calls: outgoing }),
      );
      await this.makeDurableBeforeCall(envelope);
      slot.release();
      await Promise.all(outgoing.map((e) => this.host.deliver(e)));
      // Delivered and its edge recorded: of the calls that close a cycle between nodes, the last one's search sees all the others.
      for (const to of probed) this.host.probeCycle?.(selfId, to);
      this.wakeIfAnswered(envelope.id);
      const stopped = await this.withResend(answered, outgoing);
      if (stopped !== undefined) throw stopped;
      return undefined;
    } catch (err) {
      return err ?? new Error("a call failed");
    } finally {
      this.awaiting.delete(envelope.id);
      for (const remove of edges) remove();
      await slot.acquire();
    }
  }

  /**
   * Resolves as `answered` does, or with an error once `callResendMs` passed
   * without every result: the invocation then runs again and sends its calls
   * again (as copies that the inputs stream keeps: `acceptedAtMs` is new), and
   * a callee that committed one answers its copy with the kept result. So a
   * result or a call lost on its way costs a wait, never the invocation.
   */
  private withResend(answered: Promise<Error | undefined>, calls: readonly Envelope[]): Promise<Error | undefined> {
    const after = this.host.callResendMs;
    if (after === undefined) return answered;
    return new Promise((resolve) => {
      const cancel = this.host.clock.schedule(after, () =>
        resolve(
          new ShardUnavailableError(`no result for call ${calls.map((c) => c.callId).join(", ")} within ${after} ms; sending it again`),
        ),
      );
      void answered.then((stopped) => {
        cancel();
        resolve(stopped);
      });
    });
  }

  /**
   * A request whose sender awaits the reply is kept in memory only, until its
   * commit: if the node dies, the sender retries. That stops holding once a
   * call leaves: the callee may commit, and the re-run after a crash must
   * then find the invocation still in progress, and run before anything
   * queued behind it on its instance, or it would decide anew on a state that
   * has moved on (a transfer refused for a balance a later one lowered, its
   * deposit applied all the same). So the request is logged before its first
   * call leaves, and `resumeProcessing` resumes it first.
   */
  private makeDurableBeforeCall(envelope: Envelope): Promise<void> {
    // A stopped shard has forgotten which requests it held in memory only
    // (fail() drops them), so it can no longer log one before its call
    // leaves; and its successor may already run the same request anew, on a
    // state that has moved on. No call leaves a stopped shard.
    if (this.failed !== undefined || this.closed) {
      return Promise.reject(new ShardUnavailableError(`shard ${this.shard} stopped; the call was not sent`));
    }
    if (!this.volatile.delete(envelope.id)) return Promise.resolve();
    if (envelope.payload.length === 0) envelope.payload = this.requestBytes(envelope);
    try {
      return this.append([create(LogRecordSchema, { kind: { case: "input", value: { envelope } } })]);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Records a call's reply in the caller's journal (delivered from the callee's outbox). */
  submitCallResult(envelope: Envelope): Promise<void> {
    if (this.failed !== undefined) throw new ShardUnavailableError(`shard ${this.shard} is unavailable: ${this.failed.message}`);
    if (this.state.isDuplicate(envelope)) {
      this.host.logger.info(
        `shard ${this.shard}: call result ${envelope.id} was taken before (by its source's sequence); its copy is dropped`,
        this.sourceFields(envelope),
      );
      return Promise.resolve();
    }
    const input = fromResultEnvelope(envelope);
    const durable = this.append([create(LogRecordSchema, { kind: { case: "callResult", value: { ...input, source: envelope.source } } })]);
    this.wakeIfAnswered(input.invocationId);
    return durable;
  }

  /** Runs a suspended invocation again once every call it awaits has its result in the journal. */
  private wakeIfAnswered(invocationId: string) {
    const waiting = this.awaiting.get(invocationId);
    if (waiting === undefined) return;
    const journal = this.journalOf(invocationId);
    if (!waiting.callIds.every((id) => journal.some((r) => r.callId === id))) return;
    this.awaiting.delete(invocationId);
    waiting.wake();
  }

  /** Wakes every suspended invocation with `reason`: its calls' results will not arrive here. */
  private stopAwaiting(reason: Error) {
    for (const waiting of this.awaiting.values()) waiting.wake(reason);
    this.awaiting.clear();
  }

  /**
   * Breaks a call cycle between nodes: the calls that the invocation holding
   * `instance` locked awaits to `callee`, if their callee's shard takes them
   * back (they have not started and never will under their ids), are
   * answered FailedPrecondition naming `cycle`, as a cycle found when the call
   * is made is. Such an answer is made up: never committed, given to the
   * invocation's re-runs only. Whether any call was answered so.
   */
  async breakCycle(instance: string, callee: string, cycle: string): Promise<boolean> {
    const found = [...this.awaiting].find(([, waiting]) => waiting.locked === instance);
    if (found === undefined || this.host.withdrawCall === undefined) return false;
    const [invocationId, waiting] = found;
    let broken = false;
    for (const call of waiting.calls) {
      if (`${call.target?.type}/${call.target?.key}` !== callee) continue;
      if (this.journalOf(invocationId).some((r) => r.callId === call.callId)) continue;
      if (!(await this.host.withdrawCall(call))) continue;
      // Not awaiting any more (interrupted, stopped): its re-run sends the call again, which then runs.
      if (this.awaiting.get(invocationId) !== waiting) return broken;
      this.madeUp.set(invocationId, [...(this.madeUp.get(invocationId) ?? []), refusedCallAnswer(call, Code.FailedPrecondition, cycle)]);
      broken = true;
    }
    if (broken) this.wakeIfAnswered(invocationId);
    return broken;
  }

  /**
   * Takes back a call that waits in its instance's mailbox and has not
   * started, or that is not here yet, durably: a commit consumes it and keeps
   * a FailedPrecondition answer under its id, so it never runs and any copy
   * of it that comes later gets that answer. A call cycle is answered at its
   * caller instead. Whether it did; false when the call runs or ran.
   */
  async withdrawCall(call: Envelope): Promise<boolean> {
    const target = call.target;
    if (this.failed !== undefined || this.closed || target === undefined) return false;
    const memoId = memoIdOf(call);
    const pending = this.state.pending.has(call.id);
    if (pending) {
      const id = instanceKey(target.type, target.key);
      const item = this.mailboxes.queued(id).find((i) => i.kind === "message" && i.envelope.id === call.id);
      if (item === undefined || !this.mailboxes.remove(id, item)) return false;
      if (memoId !== undefined && this.inflight.get(memoId) === call.id) this.inflight.delete(memoId);
    } else if (memoId === undefined || this.state.memo(memoId) !== undefined || this.inflight.has(memoId) || this.volatile.has(call.id)) {
      // Answered already (its answer is final), or on its way to run: not taken back.
      return false;
    }
    // Not here yet: refused before it comes (a copy of it may still be on its way).
    // Consumed with a kept answer, as if it had run and failed: a later copy of the call (a caller's re-run, a
    // copy the inputs stream stored twice) gets that answer instead of running after its caller was told it did not.
    const withdrawn = create(CommitSchema, {
      consumed: pending ? [call.id] : [],
      memos:
        memoId === undefined
          ? []
          : [
              {
                id: memoId,
                requestHash: envelopeHash(call),
                reply: errorReply(
                  Code.FailedPrecondition,
                  `call cycle: call ${call.id} to ${target.type}/${target.key} was withdrawn before it ran, to break a call cycle between nodes`,
                ),
                expiresAtMs: BigInt(this.host.clock.now() + this.host.memoRetentionMs),
                target,
                handler: call.handler,
              },
            ],
    });
    await this.append([
      create(LogRecordSchema, { kind: { case: "commit", value: withdrawn }, writtenAtMs: BigInt(this.host.clock.now()) }),
    ]);
    return true;
  }

  /** Whether this shard keeps a reply for a message (its memo), or has it still to run. */
  heldCall(envelope: Envelope): HeldCall {
    if (this.failed !== undefined || this.closed) throw new ShardUnavailableError(`shard ${this.shard} is not open`);
    const memoId = memoIdOf(envelope);
    if (memoId !== undefined) {
      const memo = this.state.memo(memoId);
      if (memo !== undefined && !(memo.expiresAtMs > 0n && memo.expiresAtMs < BigInt(this.host.clock.now()))) return "kept";
      const inflightId = this.inflight.get(memoId);
      if (inflightId !== undefined && this.pendingEnvelope(inflightId) !== undefined) return "inflight";
    }
    return this.pendingEnvelope(envelope.id) !== undefined ? "inflight" : undefined;
  }

  /**
   * An invocation could not get a call's reply: it commits nothing. Its
   * waiters hear Unavailable and retry; a logged message runs again later.
   */
  private interrupt(envelope: Envelope, reason: unknown) {
    // close() and fail() answer the waiters, and recovery re-runs logged messages.
    if (this.failed !== undefined || this.closed) return;
    const why = reason instanceof Error ? reason.message : String(reason);
    this.host.logger.warn(`shard ${this.shard}: invocation ${envelope.id} was interrupted; nothing was committed`, { error: why });
    const unavailable = new ShardUnavailableError(
      `${envelope.target?.type ?? "?"}.${envelope.handler}: nothing was committed, a call got no reply: ${why}`,
    );
    const waiters = this.waiters.get(envelope.id) ?? [];
    this.waiters.delete(envelope.id);
    this.madeUp.delete(envelope.id);
    this.ranAhead.delete(envelope.id);
    // Only an invocation not logged yet is interrupted while the shard runs (see execute): the sender holds the request, its retry runs it again.
    this.volatile.delete(envelope.id);
    const memoId = memoIdOf(envelope);
    if (memoId !== undefined && this.inflight.get(memoId) === envelope.id) this.inflight.delete(memoId);
    for (const w of waiters) this.host.reply(w, unavailable);
  }

  /** Appends the commit of a finished invocation; releases its effects once durable. */
  private commitOutcome(envelope: Envelope, reply: Reply, effects: PendingEffects, output?: Message) {
    const now = this.host.clock.now();
    const delivered = this.deliveries.take();
    const commit = buildCommit({
      shard: this.shard,
      nextOutboxSequence: this.state.nextOutboxSequence,
      envelope,
      reply,
      effects,
      nowMs: now,
      memoRetentionMs: this.host.memoRetentionMs,
      delivered,
      requestBytes: () => this.requestBytes(envelope),
    });
    const memoId = memoIdOf(envelope);
    if (memoId !== undefined) this.inflight.delete(memoId);
    this.volatile.delete(envelope.id);
    this.madeUp.delete(envelope.id);
    this.ranAhead.delete(envelope.id);
    let durable: Promise<void>;
    try {
      durable = this.append([create(LogRecordSchema, { kind: { case: "commit", value: commit }, writtenAtMs: BigInt(now) })]);
    } catch (err) {
      if (!(err instanceof RecordEncodingError)) return;
      // Nothing was appended: the deliveries ride on the next commit after all.
      this.deliveries.putBack(delivered);
      const problem = `${describe(envelope)}: its effects cannot be committed: ${err.message}`;
      if (effects.deadLetter) {
        this.host.logger.error(`shard ${this.shard}: ${problem}; the message stays pending`);
        return;
      }
      // A re-run would produce the same effects: commit the failure instead.
      const failed = errorReply(Code.Internal, problem);
      this.commitOutcome(envelope, failed, { finishedInvocations: effects.finishedInvocations, deadLetter: true });
      return;
    }
    for (const letter of commit.deadLetters) this.deadLettered(letter);
    const releasing = durable.then(
      () => this.released(envelope, reply, commit, output),
      () => {},
    );
    this.releasing.add(releasing);
    void releasing.finally(() => this.releasing.delete(releasing));
  }

  /** The request's bytes, for a dead letter (an ingress request travels decoded). */
  private requestBytes(envelope: Envelope): Uint8Array {
    const decoded = this.decodedRequests.get(envelope);
    if (envelope.payload.length > 0 || decoded === undefined) return envelope.payload;
    const input = this.host.lookup(envelope.target?.type ?? "")?.fn.handlers.get(envelope.handler)?.method.input;
    try {
      return input !== undefined ? toBinary(input, decoded) : envelope.payload;
    } catch {
      return envelope.payload;
    }
  }

  private deadLettered(letter: DeadLetter) {
    const target = letter.target;
    this.host.metrics.deadLettered(target?.type ?? "", letter.handler);
    this.host.logger.error(`shard ${this.shard}: message ${letter.envelopeId} dead-lettered (see shoal dead-letters list)`, {
      function: target?.type,
      key: target?.key,
      handler: letter.handler,
      error: letter.error?.message,
    });
  }

  /** The commit is durable: its reply, outbox and egress may leave the shard. */
  private released(envelope: Envelope, reply: Reply, commit: Commit, output: Message | undefined) {
    // Outbox first: a call's result is in the caller's journal (appended
    // synchronously in process) before the caller resumes, so the caller's
    // commit, which drops that journal, always comes after it in the log.
    for (const entry of commit.outbox) if (entry.envelope !== undefined) this.deliveries.deliverOutbox(entry.sequence, entry.envelope);
    const waiters = this.waiters.get(envelope.id);
    this.waiters.delete(envelope.id);
    if (waiters !== undefined) for (const w of waiters) this.host.reply(w, reply, output);
    for (const message of commit.egress) this.deliveries.emitEgress(message);
    for (const write of commit.stateWrites) {
      if (write.address !== undefined && write.expiresAtMs > 0n)
        this.expiry.arm(write.address.type, write.address.key, Number(write.expiresAtMs));
    }
  }

  /**
   * Appends records and applies them. A record that cannot be encoded throws
   * `RecordEncodingError` at once and fails only the message it came from;
   * any other failure is the storage's and fails the shard.
   */
  private append(records: LogRecord[]): Promise<void> {
    let result: WriteResult;
    try {
      result = this.state.write(records);
    } catch (err) {
      if (err instanceof RecordEncodingError) throw err;
      this.fail(err);
      return Promise.reject(err);
    }
    let commits = 0;
    for (const record of records) if (record.kind.case === "commit") commits++;
    if (commits > 0) this.host.metrics.committed(commits);
    result.durable.catch((err) => this.fail(err));
    return result.durable;
  }

  /**
   * The shard's periodic upkeep, which the node runs every second or so:
   * deletes expired memos and orphaned journals from the store and arms the
   * timers of state expiries coming due. Nothing here scans the instances.
   */
  maintain(): void {
    if (this.closed || this.failed !== undefined) return;
    const now = this.host.clock.now();
    this.armExpiries(now);
    try {
      this.state.expireMemos(now, memoSweepLimit)?.durable.catch((err) => this.fail(err));
      if (now - this.journalsSweptAtMs >= journalSweepMs) {
        this.journalsSweptAtMs = now;
        this.sweepJournals(now);
      }
    } catch (err) {
      this.fail(err);
    }
  }

  /**
   * A journal whose invocation is neither pending nor in flight mostly
   * belongs to a request lost in a crash: its sender retries under the same
   * id, and the re-run must find the replies its callees committed. So it is
   * kept as long as a reply memo would be (counted from the first sweep that
   * found it orphaned, in this process), then deleted.
   */
  private sweepJournals(now: number) {
    const seen = new Set<string>();
    const gone: string[] = [];
    for (const id of this.state.journalIds()) {
      seen.add(id);
      if (this.pendingEnvelope(id) !== undefined) continue;
      const since = this.orphanedSince.get(id) ?? now;
      this.orphanedSince.set(id, since);
      if (now - since > this.host.memoRetentionMs) gone.push(id);
    }
    for (const id of this.orphanedSince.keys()) if (!seen.has(id) || gone.includes(id)) this.orphanedSince.delete(id);
    this.state.dropJournals(gone)?.durable.catch((err) => this.fail(err));
  }

  /** Arms the timers of state expiries due within the next window, from the store's index. */
  private armExpiries(now: number) {
    const upTo = now + expiryWindowMs;
    if (this.expiryArmedUpTo !== undefined && upTo - this.expiryArmedUpTo < expiryWindowMs / 2) return;
    for (const { type, key, atMs } of this.state.expiringBetween(this.expiryArmedUpTo, upTo)) this.expiry.arm(type, key, atMs);
    this.expiryArmedUpTo = upTo;
  }

  /**
   * Resumes work left by the recovered state, in two phases so that a node
   * can redeliver every shard's outbox (call results included) before any
   * shard re-runs its pending invocations.
   */
  start(): void {
    this.resumeDeliveries();
    this.resumeProcessing();
  }

  /** Delivers unacknowledged outbox entries and egress again. */
  resumeDeliveries(): void {
    for (const [sequence, envelope] of this.state.outbox) this.deliveries.deliverOutbox(sequence, envelope);
    for (const message of this.state.egress.values()) this.deliveries.emitEgress(message);
  }

  /** Re-arms timers and processes pending messages in log order. */
  resumeProcessing(): void {
    this.armExpiries(this.host.clock.now());
    // An invocation that was awaiting a call when the node stopped runs again
    // before anything queued behind it on its instance, so that it sees the
    // state it saw before its call left (see `makeDurableBeforeCall`).
    const pending = [...this.state.pending.values()];
    const inProgress = (e: Envelope) => e.replyTo !== undefined && e.deliverAtMs === 0n;
    for (const envelope of [...pending.filter(inProgress), ...pending.filter((e) => !inProgress(e))]) {
      const memoId = memoIdOf(envelope);
      if (memoId !== undefined) this.inflight.set(memoId, envelope.id);
      this.schedule(envelope);
    }
  }

  private fail(err: unknown) {
    // A shard that is shutting down refuses appends by design: not a failure.
    if (this.failed !== undefined || this.closed) return;
    this.failed = err instanceof Error ? err : new Error(String(err));
    // A newer owner fenced the log: the shard moved, and reopening it here
    // would fence the new owner in turn. Stop; the new owner serves it.
    const moved = err instanceof FencedError;
    // Made up by the runtime, so not a reply: a commit may still have become
    // durable, and the sender must retry to learn it.
    const unavailable = new ShardUnavailableError(
      moved
        ? `shard ${this.shard} moved to another node, the reply is unknown (retry with the same Idempotency-Key): ${this.failed.message}`
        : `shard ${this.shard}: storage failed, the reply is unknown (retry with the same Idempotency-Key): ${this.failed.message}`,
    );
    for (const list of this.waiters.values()) for (const w of list) this.host.reply(w, unavailable);
    this.waiters.clear();
    this.volatile.clear();
    this.stopAwaiting(unavailable);
    for (const cancel of this.timers.values()) cancel();
    this.expiry.cancelAll();
    if (err instanceof FencedError) this.host.shardMoved(this, err);
    else this.host.storageFailed(this.shard, this.failed);
  }

  /** Resolves when no invocation is running and the effects of those that committed have left (for tests and shutdown). */
  async whenIdle(): Promise<void> {
    await this.mailboxes.whenIdle();
    // A commit's reply and egress leave once it is durable, after its invocation finished.
    while (this.releasing.size > 0) await Promise.all(this.releasing);
  }

  /** Stops accepting work and closes the log. */
  async close(): Promise<void> {
    // Record deliveries that happened, so a graceful restart does not repeat them
    // (if this fails they are delivered again after the restart: at-least-once).
    if (this.failed === undefined && !this.closed) await this.deliveries.appendPending()?.catch(() => {});
    this.closed = true;
    for (const cancel of this.timers.values()) cancel();
    this.expiry.cancelAll();
    this.deliveries.cancelFlush();
    // Not a reply: a commit in flight may still become durable as the log closes.
    const unavailable = new ShardUnavailableError(
      `shard ${this.shard} is shutting down; the reply is unknown (retry with the same Idempotency-Key)`,
    );
    for (const list of this.waiters.values()) for (const w of list) this.host.reply(w, unavailable);
    this.waiters.clear();
    this.stopAwaiting(unavailable);
    this.host.instanceCache.attach(this.shard, undefined);
    await this.store.close();
  }

  /** The committed (possibly not yet durable) state of an instance. */
  stateOf(type: string, key: string): Uint8Array | undefined {
    return this.state.instance(type, key)?.state;
  }

  /** A page of a type's instances in this shard, in key order: at most `limit`, after key `after`; `next` is the next page's `after`. */
  listInstances(
    type: string,
    options: { after?: string; limit: number },
  ): { instances: Array<{ key: string; state: Uint8Array }>; next?: string } {
    return this.state.listInstances(type, options);
  }

  /** Counts for `shoal status` and metrics (kept as they change: nothing is scanned). */
  stats() {
    return {
      shard: this.shard,
      instances: Number(this.state.counts.instances),
      pending: this.state.pending.size + this.volatile.size,
      outbox: this.state.outbox.size,
      memos: Number(this.state.counts.memos),
      journals: Number(this.state.counts.journals),
      sequence: this.state.sequence,
      epoch: this.store.epoch,
      failed: this.failed?.message,
    };
  }

  /** The dead letters this shard keeps, oldest first. */
  deadLetters(): DeadLetter[] {
    return [...this.state.deadLetters.values()];
  }
}

/** Memos the periodic sweep deletes at most per shard and run, so one run stays short. */
const memoSweepLimit = 1_000;
/** How often a shard looks for orphaned journals (a scan of its journal table), in ms. */
const journalSweepMs = 60_000;
/** State expiries due within this are armed as timers; later ones wait in the store's index. */
const expiryWindowMs = 60_000;

/** `type.Handler (key "k")`, how errors name a message's target. */
function describe(envelope: Envelope): string {
  return `${envelope.target?.type ?? "?"}.${envelope.handler} (key "${envelope.target?.key ?? ""}")`;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function fromResultEnvelope(envelope: Envelope) {
  return fromBinary(CallResultInputSchema, envelope.payload);
}
