import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import type { Address } from "@shoal/sdk";
import {
  CallResultInputSchema,
  type CancellationSchema,
  type Commit,
  CommitSchema,
  callResultId,
  cancelId,
  type DeadLetterSchema,
  type EgressMessageSchema,
  type Envelope,
  EnvelopeSchema,
  type MemoSchema,
  memoIdOf,
  type OutboxEntry,
  parseToken,
  type Reply,
  requestHash,
  type StateWriteSchema,
} from "@shoal/sdk/internal";
import type { Effects } from "../invoker/invoker.js";
import type { DeliveredSoFar } from "./deliveries.js";
import { controlHandlers } from "./shard-state.js";

/** What an invocation commits besides its reply, before sequences are assigned. */
export interface PendingEffects {
  /** Set when the message failed for good: its commit records it as dead-lettered. */
  deadLetter?: boolean;
  stateWrites?: MessageInitShape<typeof StateWriteSchema>[];
  outbox?: Envelope[];
  cancellations?: MessageInitShape<typeof CancellationSchema>[];
  egress?: MessageInitShape<typeof EgressMessageSchema>[];
  finishedInvocations?: string[];
}

const textEncoder = new TextEncoder();

/** The identity of a request for idempotency: its handler and payload. */
export function envelopeHash(envelope: Envelope): Uint8Array {
  const handler = textEncoder.encode(`${envelope.handler}\u0000`);
  const bytes = new Uint8Array(handler.length + envelope.payload.length);
  bytes.set(handler);
  bytes.set(envelope.payload, handler.length);
  return requestHash(bytes);
}

/** Where an invocation runs and what it may touch, for turning its effects into what it commits. */
export interface EffectsContext {
  /** The message the invocation ran. */
  readonly envelope: Envelope;
  /** The instance it ran on. */
  readonly self: Address;
  /** Its shard. */
  readonly shard: number;
  readonly nowMs: number;
  /** The function's state TTL, if its state expires. */
  readonly stateTtlMs: number | undefined;
  /** Whether the invocation has a journal (it made calls): its commit drops it. */
  readonly journaled: boolean;
  /** The shard of an instance. */
  shardOf(type: string, key: string): number;
  /** Logs an effect that is dropped. */
  warn(message: string): void;
}

/** Turns a finished invocation's effects (state, sends, cancellations, egress) into what its commit holds. */
export function pendingEffects(effects: Effects, context: EffectsContext): PendingEffects {
  const { envelope, self, nowMs: now } = context;
  const commit: PendingEffects = {};
  if (effects.state.kind !== "keep") {
    const ttl = context.stateTtlMs;
    commit.stateWrites = [
      effects.state.kind === "clear"
        ? { address: self, clear: true }
        : { address: self, state: effects.state.bytes, expiresAtMs: ttl !== undefined ? BigInt(now + ttl) : 0n },
    ];
  }
  const outbox: Envelope[] = [];
  for (const send of effects.sends) {
    outbox.push(
      create(EnvelopeSchema, {
        id: send.id,
        target: send.target,
        handler: send.handler,
        payload: send.payload,
        caller: self,
        deliverAtMs: send.delayMs > 0 ? BigInt(now + send.delayMs) : 0n,
        traceparent: envelope.traceparent,
        acceptedAtMs: BigInt(now),
      }),
    );
  }
  const cancellations: MessageInitShape<typeof CancellationSchema>[] = [];
  for (const token of effects.cancels) {
    const parts = parseToken(token);
    if (parts === undefined) {
      context.warn(`ctx.cancel: ignoring a token that is not a cancellation token: ${token}`);
      continue;
    }
    const shard = context.shardOf(parts.target.type, parts.target.key);
    if (shard === context.shard) {
      cancellations.push({ shard, envelopeId: parts.messageId });
    } else {
      outbox.push(
        create(EnvelopeSchema, {
          id: cancelId(envelope.id, cancellations.length, parts.messageId),
          target: parts.target,
          handler: controlHandlers.cancel,
          payload: textEncoder.encode(parts.messageId),
        }),
      );
    }
  }
  // A send to a message cancelled in the same invocation never leaves.
  commit.cancellations = cancellations;
  commit.outbox = outbox;
  commit.egress = effects.egress.map((e) => ({ egress: e.egress, typeName: e.typeName, payload: e.payload, id: e.id }));
  if (context.journaled) commit.finishedInvocations = [envelope.id];
  return commit;
}

/** What a finished invocation's commit is built from. */
export interface CommitInput {
  readonly shard: number;
  /** The sequence the shard's next outbox entry gets. */
  readonly nextOutboxSequence: bigint;
  /** The message the invocation consumed. */
  readonly envelope: Envelope;
  readonly reply: Reply;
  readonly effects: PendingEffects;
  readonly nowMs: number;
  /** How long the reply is kept for retries with the same idempotency key or call id. */
  readonly memoRetentionMs: number;
  /** Deliveries done that ride on this commit. */
  readonly delivered: DeliveredSoFar;
  /** The request's bytes, for a dead letter (an ingress request travels decoded). */
  requestBytes(): Uint8Array;
}

/**
 * The commit of a finished invocation: its effects, its outbox stamped with
 * the shard's next sequences (a call's reply among them, as a `$result`
 * message to the caller's shard), the memo of its reply, the deliveries that
 * ride along, and its dead letter if it failed for good. It stamps the
 * outbox envelopes' `source`.
 */
export function buildCommit(input: CommitInput): Commit {
  const { envelope, reply, effects, nowMs: now } = input;
  const outbox: OutboxEntry[] = [];
  const stamp = (e: Envelope): OutboxEntry => {
    const sequence = input.nextOutboxSequence + BigInt(outbox.length);
    e.source = { $typeName: "shoal.v1.OutboxSource", shard: input.shard, sequence };
    return { $typeName: "shoal.v1.OutboxEntry", sequence, envelope: e };
  };
  for (const e of effects.outbox ?? []) outbox.push(stamp(e));
  const result = callResultEnvelope(envelope, reply);
  if (result !== undefined) outbox.push(stamp(result));
  const memoId = memoIdOf(envelope);
  const memos: MessageInitShape<typeof MemoSchema>[] =
    memoId !== undefined
      ? [
          {
            id: memoId,
            requestHash: envelopeHash(envelope),
            reply,
            expiresAtMs: BigInt(now + input.memoRetentionMs),
            target: envelope.target,
            handler: envelope.handler,
          },
        ]
      : [];
  const deadLetters: MessageInitShape<typeof DeadLetterSchema>[] = effects.deadLetter
    ? [
        {
          envelopeId: envelope.id,
          target: envelope.target,
          handler: envelope.handler,
          payload: input.requestBytes(),
          caller: envelope.caller,
          error: reply.result.case === "error" ? reply.result.value : undefined,
          deadAtMs: BigInt(now),
        },
      ]
    : [];
  return create(CommitSchema, {
    stateWrites: effects.stateWrites,
    cancellations: effects.cancellations,
    egress: effects.egress,
    finishedInvocations: effects.finishedInvocations,
    consumed: [envelope.id],
    outbox,
    memos,
    acked: input.delivered.acked,
    egressDelivered: input.delivered.egressDelivered,
    invocationId: envelope.id,
    deadLetters,
  });
}

/** A call's reply as a `$result` message to the caller's shard, or undefined when the message was no call. */
export function callResultEnvelope(envelope: Envelope, reply: Reply): Envelope | undefined {
  const replyTo = envelope.replyTo?.kind;
  if (replyTo?.case !== "call" || replyTo.value.caller === undefined) return undefined;
  const target = envelope.target;
  const result = create(CallResultInputSchema, {
    invocationId: replyTo.value.invocationId,
    result: {
      callId: envelope.callId,
      target: target !== undefined ? { type: target.type, key: target.key } : undefined,
      handler: envelope.handler,
      requestHash: requestHash(envelope.payload),
      reply,
    },
  });
  return create(EnvelopeSchema, {
    id: callResultId(envelope.id),
    target: replyTo.value.caller,
    shard: replyTo.value.shard,
    handler: controlHandlers.callResult,
    payload: toBinary(CallResultInputSchema, result),
  });
}
