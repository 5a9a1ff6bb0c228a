import { create, fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { Address, Logger } from "@shoal/sdk";
import {
  type CallResult,
  CallResultInputSchema,
  CallResultSchema,
  type Commit,
  type DeadLetter,
  type EgressMessage,
  type Envelope,
  EnvelopeSchema,
  errorReply,
  instanceId,
  type LogRecord,
  LogRecordSchema,
  memoIdOf,
  type Reply,
  requestHash,
  sameBytes,
} from "@shoal/sdk/internal";
import type { CallCycles } from "../invoker/call-cycles.js";
import { createEmbeddedInvoker, type RegisteredFunction } from "../invoker/embedded-invoker.js";
import type { AwaitedCall, Invoker, MessageOutcome } from "../invoker/invoker.js";
import { lazyLogger } from "../observe/logger.js";
import type { RuntimeMetrics } from "../observe/metrics.js";
import { FencedError, RecordEncodingError, type ShardLog } from "../storage/storage.js";
import type { Clock } from "./clock.js";
import { buildCommit, envelopeHash, type PendingEffects, pendingEffects } from "./commit-builder.js";
import { createDeliveries, type Deliveries } from "./deliveries.js";
import { createExpiry, type Expiry } from "./expiry.js";
import { createMailboxes, type Mailboxes } from "./mailboxes.js";
import { createSlot, type Semaphore, type Slot } from "./semaphore.js";
import { controlHandlers, ShardState } from "./shard-state.js";

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
  readonly snapshotEvery: number;
  /** Log bytes the node may write after a shard's oldest unsnapshotted record before that shard snapshots. */
  readonly snapshotLogBytes: number;
  /** Age of a shard's oldest unsnapshotted record at which it snapshots, in ms. */
  readonly snapshotAfterMs: number;
  /** Bytes the node's storage has written so far (0 when it does not count them). */
  logBytesWritten(): number;
  readonly logger: Logger;
  readonly metrics: RuntimeMetrics;
  /** The node's call-cycle detector: which locked instance awaits calls to which. */
  readonly callCycles: CallCycles;
  /** Runs handlers; default: in this process (the embedded invoker). */
  readonly invoker?: Invoker;
  /** Time an invoker has to answer one invocation before it is abandoned and retried, in ms. */
  readonly invokeTimeoutMs: number;
  invocationLogger(fields: Record<string, unknown>): Logger;
  lookup(typeName: string): RegisteredFunction | undefined;
  shardOf(type: string, key: string): number;
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
  heldCall(envelope: Envelope): "kept" | "inflight" | undefined;
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
  private recordsSinceSnapshot = 0;
  /**
   * When the oldest record no snapshot covers was written (clock ms and the
   * node's log bytes then): it pins the log from there on, so the log stays
   * bounded only if every shard snapshots by bytes and age, not just by count.
   */
  private unsnapshotted: { readonly atMs: number; readonly logBytes: number } | undefined;
  /** The last append's durable promise: a snapshot must not get ahead of it. */
  private lastDurable: Promise<void> = Promise.resolve();
  /** Journal (invocation id) -> when a snapshot first found its invocation neither pending nor in flight. */
  private readonly orphanedSince = new Map<string, number>();
  /** Pending message id -> how often its invocation was interrupted in a row. */
  private readonly interruptions = new Map<string, number>();
  /** Suspended invocation id -> the calls whose results it awaits, and how to wake it (with an error: stop). */
  private readonly awaiting = new Map<string, { readonly callIds: readonly string[]; readonly wake: (stopped?: Error) => void }>();
  /**
   * Invocation id -> answers the runtime made up for its calls (a cycle):
   * given to its re-runs, never committed (only a callee's reply is final).
   */
  private readonly madeUp = new Map<string, CallResult[]>();
  private readonly invoker: Invoker;
  private snapshotting = false;
  private failed: Error | undefined;
  private closed = false;

  constructor(
    readonly shard: number,
    private readonly log: ShardLog,
    private readonly host: ShardHost,
  ) {
    this.state = new ShardState(shard);
    this.invoker = host.invoker ?? createEmbeddedInvoker(host);
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
    this.expiry = createExpiry({
      clock: host.clock,
      instance: (id) => this.state.instances.get(id),
      due: (id, type, key) => this.mailboxes.enqueue(id, { kind: "expire", type, key }),
      append,
    });
    this.deliveries = createDeliveries({
      shard,
      logger: host.logger,
      deliver: (envelope) => host.deliver(envelope),
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
      let memo = this.state.memos.get(memoId);
      const hash = envelopeHash(envelope);
      // Past its retention a memo is forgotten, even before a snapshot prunes it.
      if (memo !== undefined && memo.expiresAtMs > 0n && memo.expiresAtMs < BigInt(this.host.clock.now())) memo = undefined;
      if (memo !== undefined) {
        if (!sameBytes(memo.requestHash, hash)) {
          if (waiter !== undefined) this.host.reply(waiter, this.mismatch(envelope));
        } else if (waiter !== undefined) {
          this.host.reply(waiter, memo.reply ?? errorReply(Code.Internal, "memoized reply is missing"));
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
    if (this.state.isDuplicate(envelope)) return Promise.resolve();
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
    this.mailboxes.enqueue(instanceId(target.type, target.key), { kind: "message", envelope });
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
      const step = await this.invokeOnce(envelope, self, fn.state !== undefined, log);
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
        // A call that got no reply is asked again a few times here, then left to the sender to retry.
        if (attempt >= maxAttempts) return { interrupted: failure };
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
      log.warn(`${failed}, retrying in ${delay} ms (attempt ${attempt} of ${maxAttempts})`, { error: errorMessage(failure) });
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
        commit: this.state.journals.has(envelope.id) ? { finishedInvocations: [envelope.id] } : {},
      };
    }
    const commit = pendingEffects(effects, {
      envelope,
      self,
      shard: this.shard,
      nowMs: this.host.clock.now(),
      stateTtlMs: fn.stateTtlMs,
      journaled: this.state.journals.has(envelope.id),
      shardOf: (type, key) => this.host.shardOf(type, key),
      warn: (message) => log.warn(message),
    });
    return { reply: outcome.reply, commit, output: outcome.output };
  }

  /**
   * Asks the invoker to run one message, within the invoke timeout. Its
   * answer is refused when it is for another instance: nothing of it commits.
   */
  private async invokeOnce(envelope: Envelope, self: Address, stateful: boolean, log: Logger): Promise<MessageOutcome> {
    const timeoutMs = this.host.invokeTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `${describe(envelope)}: the invoker did not answer within ${timeoutMs} ms (invokeTimeoutMs); the run is abandoned (raise invokeTimeoutMs if handlers need longer)`,
            ),
          ),
        timeoutMs,
      );
    });
    let response: Awaited<ReturnType<Invoker["invoke"]>>;
    const inProcess = this.invoker.inProcess === true;
    try {
      const invoked = this.invoker.invoke({
        address: self,
        state: stateful ? this.state.instances.get(instanceId(self.type, self.key))?.state : undefined,
        messages: [
          inProcess
            ? {
                envelope,
                journal: this.journalOf(envelope.id),
                decoded: this.decodedRequests.get(envelope),
                // Only an in-process ingress waiter with nothing to memoize can take the message itself.
                encodeReply: !(envelope.replyTo?.kind.case === "ingress" && memoIdOf(envelope) === undefined),
              }
            : { envelope: this.withPayload(envelope), journal: this.journalOf(envelope.id) },
        ],
      });
      invoked.catch(() => {});
      response = await Promise.race([invoked, timeout]);
    } catch (err) {
      return { status: "failed", retryable: true, message: errorMessage(err) };
    } finally {
      clearTimeout(timer);
    }
    const got = response.address;
    if (got?.type !== self.type || got.key !== self.key) {
      const message = `${describe(envelope)}: the invoker answered for instance ${got?.type}/${got?.key}, not ${self.type}/${self.key}; its effects are refused (a bug in the invoker: it must answer for the instance it was given)`;
      log.error(message);
      this.host.metrics.invokerRefused(self.type, envelope.handler);
      return { status: "failed", retryable: true, message };
    }
    return (
      response.outcomes[0] ?? { status: "failed", retryable: true, message: `${describe(envelope)}: the invoker answered nothing for it` }
    );
  }

  /** The call results an invocation has so far: its journal and the answers made up for it, in call order. */
  private journalOf(invocationId: string): CallResult[] {
    const journal = [...(this.state.journals.get(invocationId) ?? []), ...(this.madeUp.get(invocationId) ?? [])];
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
        const cycle = targetLocks ? this.host.callCycles.find(chain, selfId, targetId, locked) : undefined;
        if (cycle !== undefined) {
          // A re-run may re-issue a call its callee has answered already:
          // only that answer is final. A cycle answer is final only if the
          // callee holds nothing for this call id, so it can never commit it.
          const held = this.host.heldCall(callEnvelope);
          if (held === "inflight")
            throw new ShardUnavailableError(`call ${call.callId} to ${targetId} is still to run there, behind this locked instance`);
          if (held === undefined) {
            const answer = create(CallResultSchema, {
              callId: call.callId,
              target: call.target,
              handler: call.handler,
              requestHash: requestHash(call.payload),
              reply: errorReply(Code.FailedPrecondition, cycle),
            });
            this.madeUp.set(envelope.id, [...(this.madeUp.get(envelope.id) ?? []), answer]);
            continue;
          }
          // Kept: the callee's shard answers from its memo without waiting for its lock.
        } else if (locked && targetLocks) {
          edges.push(this.host.callCycles.wait(selfId, targetId));
        }
        outgoing.push(callEnvelope);
      }
      if (outgoing.length === 0) return undefined;
      const callIds = outgoing.map((e) => e.callId);
      const answered = new Promise<Error | undefined>((resolve) => this.awaiting.set(envelope.id, { callIds, wake: resolve }));
      await this.makeDurableBeforeCall(envelope);
      slot.release();
      await Promise.all(outgoing.map((e) => this.host.deliver(e)));
      this.wakeIfAnswered(envelope.id);
      const stopped = await answered;
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
    if (this.state.isDuplicate(envelope)) return Promise.resolve();
    const input = fromResultEnvelope(envelope);
    const durable = this.append([create(LogRecordSchema, { kind: { case: "callResult", value: { ...input, source: envelope.source } } })]);
    this.wakeIfAnswered(input.invocationId);
    return durable;
  }

  /** Runs a suspended invocation again once every call it awaits has its result in the journal. */
  private wakeIfAnswered(invocationId: string) {
    const waiting = this.awaiting.get(invocationId);
    if (waiting === undefined) return;
    const journal = this.state.journals.get(invocationId) ?? [];
    if (!waiting.callIds.every((id) => journal.some((r) => r.callId === id))) return;
    this.awaiting.delete(invocationId);
    waiting.wake();
  }

  /** Wakes every suspended invocation with `reason`: its calls' results will not arrive here. */
  private stopAwaiting(reason: Error) {
    for (const waiting of this.awaiting.values()) waiting.wake(reason);
    this.awaiting.clear();
  }

  /** Whether this shard keeps a reply for a message (its memo), or has it still to run. */
  heldCall(envelope: Envelope): "kept" | "inflight" | undefined {
    if (this.failed !== undefined || this.closed) throw new ShardUnavailableError(`shard ${this.shard} is not open`);
    const memoId = memoIdOf(envelope);
    if (memoId !== undefined) {
      const memo = this.state.memos.get(memoId);
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
    if (this.volatile.delete(envelope.id)) {
      // The sender holds the request: its retry runs it again.
      const memoId = memoIdOf(envelope);
      if (memoId !== undefined && this.inflight.get(memoId) === envelope.id) this.inflight.delete(memoId);
    } else if (this.state.pending.has(envelope.id)) {
      const n = (this.interruptions.get(envelope.id) ?? 0) + 1;
      this.interruptions.set(envelope.id, n);
      const { initialDelayMs, maxDelayMs } = this.host.retry;
      const timer = setTimeout(
        () => {
          this.timers.delete(envelope.id);
          if (this.state.pending.has(envelope.id) && this.failed === undefined && !this.closed) this.dispatch(envelope);
        },
        Math.min(maxDelayMs, initialDelayMs * 2 ** (n - 1)),
      );
      timer.unref?.();
      this.timers.set(envelope.id, () => clearTimeout(timer));
    }
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
    this.interruptions.delete(envelope.id);
    this.madeUp.delete(envelope.id);
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
    durable.then(
      () => this.released(envelope, reply, commit, output),
      () => {},
    );
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
    let result: ReturnType<ShardLog["append"]>;
    try {
      result = this.log.append(records);
    } catch (err) {
      if (err instanceof RecordEncodingError) throw err;
      this.fail(err);
      return Promise.reject(err);
    }
    let commits = 0;
    for (const record of records) {
      this.state.apply(record, result.lastSequence);
      if (record.kind.case === "commit") commits++;
    }
    if (commits > 0) this.host.metrics.committed(commits);
    this.recordsSinceSnapshot += records.length;
    this.unsnapshotted ??= { atMs: this.host.clock.now(), logBytes: this.host.logBytesWritten() };
    this.lastDurable = result.durable;
    this.snapshotIfDue();
    result.durable.catch((err) => this.fail(err));
    return result.durable;
  }

  /**
   * Snapshots when `snapshotEvery` records, `snapshotLogBytes` of the node's
   * log or `snapshotAfterMs` have passed since the oldest record no snapshot
   * covers. The node also calls it periodically, for idle shards that pin old
   * log segments.
   */
  snapshotIfDue(): void {
    const since = this.unsnapshotted;
    if (since === undefined || this.snapshotting || this.closed || this.failed !== undefined) return;
    if (
      this.recordsSinceSnapshot >= this.host.snapshotEvery ||
      this.host.logBytesWritten() - since.logBytes >= this.host.snapshotLogBytes ||
      this.host.clock.now() - since.atMs >= this.host.snapshotAfterMs
    ) {
      this.unsnapshotted = undefined;
      this.snapshot(this.lastDurable);
    }
  }

  private snapshot(durable: Promise<void>) {
    this.snapshotting = true;
    this.recordsSinceSnapshot = 0;
    const now = this.host.clock.now();
    this.state.pruneMemos(now);
    // A journal whose invocation is neither pending nor in flight mostly
    // belongs to a request lost in a crash: its sender retries under the same
    // id, and the re-run must find the replies its callees committed. So it
    // is kept as long as a reply memo would be (the retention counts from the
    // first snapshot that found it orphaned, in this process).
    for (const id of this.orphanedSince.keys()) if (!this.state.journals.has(id)) this.orphanedSince.delete(id);
    this.state.pruneJournals((id) => {
      if (this.pendingEnvelope(id) !== undefined) {
        this.orphanedSince.delete(id);
        return true;
      }
      const since = this.orphanedSince.get(id) ?? now;
      this.orphanedSince.set(id, since);
      return now - since <= this.host.memoRetentionMs;
    });
    const snapshot = this.state.toSnapshot();
    durable
      .then(() => this.log.writeSnapshot(snapshot))
      .catch((err) => this.host.logger.warn(`shard ${this.shard}: snapshot failed`, { error: String(err) }))
      .finally(() => {
        this.snapshotting = false;
      });
  }

  /** Rebuilds the shard's state from its snapshot and log. Call before `start`. */
  async recover(): Promise<void> {
    const recovered = await this.log.recover();
    this.state = recovered.snapshot !== undefined ? ShardState.fromSnapshot(recovered.snapshot) : new ShardState(this.shard);
    for (const { sequence, record } of recovered.records) this.state.apply(record, sequence);
    this.recordsSinceSnapshot = recovered.records.length;
    if (recovered.records.length > 0) this.unsnapshotted = { atMs: this.host.clock.now(), logBytes: this.host.logBytesWritten() };
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
    for (const instance of this.state.instances.values())
      if (instance.expiresAtMs > 0) this.expiry.arm(instance.type, instance.key, instance.expiresAtMs);
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

  /** Resolves when no invocation is running (for tests and shutdown). */
  whenIdle(): Promise<void> {
    return this.mailboxes.whenIdle();
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
    await this.log.close();
  }

  /** The committed (possibly not yet durable) state of an instance. */
  stateOf(type: string, key: string): Uint8Array | undefined {
    return this.state.instances.get(instanceId(type, key))?.state;
  }

  /** Every instance of a type in this shard. */
  instancesOf(type: string): Array<{ key: string; state: Uint8Array }> {
    const out: Array<{ key: string; state: Uint8Array }> = [];
    for (const i of this.state.instances.values()) if (i.type === type) out.push({ key: i.key, state: i.state });
    return out;
  }

  /** Counts for `shoal status` and metrics. */
  stats() {
    return {
      shard: this.shard,
      instances: this.state.instances.size,
      pending: this.state.pending.size + this.volatile.size,
      outbox: this.state.outbox.size,
      memos: this.state.memos.size,
      journals: this.state.journals.size,
      sequence: this.state.sequence,
      epoch: this.log.epoch,
      failed: this.failed?.message,
    };
  }

  /** The dead letters this shard keeps, oldest first. */
  deadLetters(): DeadLetter[] {
    return [...this.state.deadLetters.values()];
  }
}

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
