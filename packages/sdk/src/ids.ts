// Every id scheme of envelopes and their bookkeeping, in one place. The SDK
// makes some of them (call, send and egress ids, cancellation tokens) while a
// handler runs, and the runtime makes the rest; the SDK cannot import the
// runtime, so they live here and the runtime imports them from
// @shoal/sdk/internal. Web-standard code only: the SDK loads without node:.
//
// These ids are stored in logs, snapshots and users' state (tokens): changing a
// scheme breaks deduplication of what an older runtime wrote.
import { sha256 } from "@noble/hashes/sha2.js";
import type { Address } from "./function-type.js";
import type { Envelope } from "./gen/shoal/v1/protocol_pb.js";

const textEncoder = new TextEncoder();

/** The id of a request without an idempotency key: random, unique. */
export function requestId(): string {
  return crypto.randomUUID();
}

/**
 * The envelope id of a request with an `Idempotency-Key`: `k-` and a hash of
 * its instance, handler and key, so a retry gets the same id and is dropped as
 * a duplicate while the first is pending.
 */
export function idempotentRequestId(type: string, key: string, handler: string, idempotencyKey: string): string {
  return `k-${base64url(sha256(textEncoder.encode(`${type}\u0000${key}\u0000${handler}\u0000${idempotencyKey}`)))}`;
}

/** The deterministic id of an invocation's `n`th `ctx.call` (from 0): `invocationId/n`. */
export function callId(invocationId: string, n: number): string {
  return `${invocationId}/${n}`;
}

/** The id of an invocation's `n`th `ctx.send` (from 0): `invocationId:sN`. */
export function sendId(invocationId: string, n: number): string {
  return `${invocationId}:s${n}`;
}

/** The id of an invocation's `n`th `ctx.egress` message (from 0): `invocationId:eN`. */
export function egressId(invocationId: string, n: number): string {
  return `${invocationId}:e${n}`;
}

/** The id of the envelope carrying a call's result back to the caller's shard: `callEnvelopeId:r`. */
export function callResultId(callEnvelopeId: string): string {
  return `${callEnvelopeId}:r`;
}

/**
 * The id of a kept call result sent again, because a copy of its call came
 * after the call committed (the caller ran again and may not have it):
 * `callEnvelopeId:r@atMs`. Unlike `callResultId`, a new id each time, so
 * that a stream which drops a repeated message id keeps each one.
 */
export function resentCallResultId(callEnvelopeId: string, atMs: number): string {
  return `${callEnvelopeId}:r@${atMs}`;
}

/**
 * The id of the envelope that cancels the delayed message `messageId` on
 * another shard: `invocationId:cN:messageId` (the message id alone makes it
 * unique within the invocation).
 */
export function cancelId(invocationId: string, n: number, messageId: string): string {
  return `${invocationId}:c${n}:${messageId}`;
}

/** An instance's id within a shard: `type\0key` (a type name has no NUL). */
export function instanceId(type: string, key: string): string {
  return `${type}\u0000${key}`;
}

/** What a memo id stands for: a call's reply, or a reply under a client's idempotency key. */
export type MemoKey =
  | { readonly kind: "call"; readonly callId: string }
  | { readonly kind: "idempotency"; readonly target: Address; readonly handler: string; readonly idempotencyKey: string };

/**
 * The id a reply is memoized under: `call\0<call id>`, or
 * `idem\0<type>\0<key>\0<handler>\0<idempotency key>`. Neither a type or
 * handler name nor a header value holds a NUL, so a key that does still
 * parses back (`parseMemoId`).
 */
export function memoId(memo: MemoKey): string {
  if (memo.kind === "call") return `call\u0000${memo.callId}`;
  return `idem\u0000${memo.target.type}\u0000${memo.target.key}\u0000${memo.handler}\u0000${memo.idempotencyKey}`;
}

/** The inverse of `memoId`, or undefined for a string that is not a memo id. */
export function parseMemoId(id: string): MemoKey | undefined {
  const parts = id.split("\u0000");
  if (parts[0] === "call" && parts.length >= 2) return { kind: "call", callId: parts.slice(1).join("\u0000") };
  if (parts[0] !== "idem" || parts.length < 5) return undefined;
  // The key is the only part that may hold a NUL: everything between the type and the last two.
  const [type = "", handler = "", idempotencyKey = ""] = [parts[1], parts[parts.length - 2], parts[parts.length - 1]];
  return { kind: "idempotency", target: { type, key: parts.slice(2, -2).join("\u0000") }, handler, idempotencyKey };
}

/** The memo id under which a message's reply is memoized: its call's, or its idempotency key's; undefined for neither. */
export function memoIdOf(envelope: Envelope): string | undefined {
  if (envelope.callId !== "") return memoId({ kind: "call", callId: envelope.callId });
  if (envelope.idempotencyKey === "") return undefined;
  return memoId({
    kind: "idempotency",
    target: { type: envelope.target?.type ?? "", key: envelope.target?.key ?? "" },
    handler: envelope.handler,
    idempotencyKey: envelope.idempotencyKey,
  });
}

/** The parts of a cancellation token: the delayed message and where it waits. */
export interface TokenParts {
  readonly target: Address;
  readonly messageId: string;
}

// Tokens live in users' state, so they are printable and stable: three
// URI-encoded parts joined by "|" (which encodeURIComponent always escapes).
/** The cancellation token `ctx.send` returns for a delayed message. */
export function formatToken(parts: TokenParts): string {
  return [parts.target.type, parts.target.key, parts.messageId].map(encodeURIComponent).join("|");
}

/** The inverse of `formatToken`, or undefined for a string that is not a token. */
export function parseToken(token: string): TokenParts | undefined {
  const parts = token.split("|");
  if (parts.length !== 3) return undefined;
  let decoded: string[];
  try {
    decoded = parts.map(decodeURIComponent);
  } catch {
    // A malformed escape (`%E0%A4%A`): not a token this module made.
    return undefined;
  }
  const [type = "", key = "", messageId = ""] = decoded;
  if (type === "" || messageId === "") return undefined;
  return { target: { type, key }, messageId };
}

function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
