import { create, type DescMessage, type DescMethod, fromBinary, type Message, toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { sha256 } from "@noble/hashes/sha2.js";
import type { BaseContext, CancellationToken, Logger, SendOptions } from "./context.js";
import { type Address, type AnyFunctionType, formatAddress, type HandlerInfo, handlerByLocalName, keyOf } from "./function-type.js";
import { type CallResult, CallResultSchema, type Reply, ReplySchema } from "./gen/shoal/v1/protocol_pb.js";
import { callId as callIdOf, egressId, formatToken, sendId } from "./ids.js";
import { ShoalError } from "./shoal-error.js";

/** A call a handler made that has no result in the journal yet. */
export interface OutgoingCall {
  /** `invocationId/n`. */
  readonly callId: string;
  readonly target: Address;
  readonly handler: string;
  /** The target handler's method: its request and reply schemas. */
  readonly method: DescMethod;
  /** The request, as the handler made it and as binary protobuf. */
  readonly request: Message;
  readonly payload: Uint8Array;
  readonly requestHash: Uint8Array;
  /** Whether the target handler is shared (no cycle on a locked instance). */
  readonly shared: boolean;
}

/** A one-way message a handler sent; delivered only if the invocation commits. */
export interface OutgoingSend {
  /** Deterministic: `invocationId:sN`. */
  readonly id: string;
  readonly target: Address;
  readonly handler: string;
  /** The request, as the handler made it and as binary protobuf. */
  readonly request: Message;
  readonly payload: Uint8Array;
  /** Milliseconds after the commit; 0 for now. */
  readonly delayMs: number;
}

export interface OutgoingEgress {
  readonly egress: string;
  readonly typeName: string;
  /** The message, as the handler made it and as binary protobuf. */
  readonly message: Message;
  readonly payload: Uint8Array;
  /** Deterministic: `invocationId:eN`. */
  readonly id: string;
}

export type StateChange = { readonly kind: "keep" } | { readonly kind: "write"; readonly bytes: Uint8Array } | { readonly kind: "clear" };

/** What a finished invocation commits. */
export interface InvocationEffects {
  readonly state: StateChange;
  readonly sends: readonly OutgoingSend[];
  /** Cancellation tokens of delayed messages. */
  readonly cancels: readonly CancellationToken[];
  readonly egress: readonly OutgoingEgress[];
}

/**
 * The outcome of running a handler once.
 * - `done`: it returned or threw a ShoalError; `reply` goes to the caller and
 *   `effects` commit (no effects with an error reply). With `poison`, the
 *   request, state or result could not be decoded or encoded: a re-run would
 *   fail the same way, so the runtime dead-letters the message instead.
 * - `suspended`: it awaits calls the invoker chose not to run inline (the
 *   runtime's invokers never do); re-run it with their results in the journal.
 * - `retry`: it threw something else; run it again later with the same journal.
 * - `interrupted`: `issueCall` rejected, so a call's reply is unknown (the
 *   runtime could not get the callee's committed reply). Whatever the handler
 *   made of that, nothing may commit: run it again once the callee answers.
 */
export type InvocationOutcome =
  | {
      readonly status: "done";
      readonly reply: Reply;
      /** The reply message itself, when it succeeded (with `encodeReply: false`, `reply` carries no bytes: use this). */
      readonly output?: Message;
      readonly effects: InvocationEffects;
      readonly journal: readonly CallResult[];
      /** Set when the invocation failed the same way any re-run would (`reply` says why). */
      readonly poison?: true;
    }
  | { readonly status: "suspended"; readonly pending: readonly OutgoingCall[]; readonly journal: readonly CallResult[] }
  | { readonly status: "retry"; readonly error: unknown; readonly journal: readonly CallResult[] }
  | { readonly status: "interrupted"; readonly error: unknown; readonly journal: readonly CallResult[] };

/** Everything needed to run one handler on one message. */
export interface InvocationRequest {
  readonly fn: AnyFunctionType;
  readonly handlers: object;
  readonly handler: HandlerInfo;
  readonly invocationId: string;
  readonly self: Address;
  readonly caller: Address | undefined;
  /** The request, binary protobuf. */
  readonly payload: Uint8Array;
  /** The request already decoded (an in-process caller has it): then `payload` is not read. */
  readonly request?: Message;
  /**
   * Whether the successful reply must be encoded into `reply`. Default true.
   * An in-process caller that takes `output` and memoizes nothing saves the
   * encoding (and the decoding on its side).
   */
  readonly encodeReply?: boolean;
  /** Whether `issueCall` may answer "suspend". Default true. */
  readonly canSuspend?: boolean;
  /** The committed state, binary protobuf; `undefined` for a new instance or a stateless function. */
  readonly state: Uint8Array | undefined;
  /** Results of calls made by earlier runs of this invocation (in call order, or any order). */
  readonly journal: readonly CallResult[];
  readonly log: Logger;
  /**
   * Runs a call that is not in the journal. Return its reply (an inline
   * runner such as `@shoal/testing`'s `runHandler`), or `"suspend"` to end
   * this run and re-run once the reply is in the journal (the runtime). Resolve only with the callee's
   * committed reply (or an answer that is final for this call id); reject
   * when the reply is unknown: the outcome is then `interrupted`.
   */
  readonly issueCall: (call: OutgoingCall) => Promise<Reply> | "suspend";
}

/** Thrown inside a handler's `ctx.call` to end a suspended run; never seen by users' code paths that finish. */
class Suspended extends Error {
  override name = "Suspended";
}

/**
 * SHA-256 of a request payload, the identity of a call. Synchronous and free
 * of `node:` built-ins, so a function module also loads where only
 * web-standard APIs exist (WebCrypto's digest is asynchronous).
 */
export function requestHash(payload: Uint8Array): Uint8Array {
  return sha256(payload);
}

/** Whether two byte arrays hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Reply of a successful handler. */
export function okReply(payload: Uint8Array): Reply {
  return create(ReplySchema, { result: { case: "ok", value: payload } });
}

/** Reply of a failed handler. */
export function errorReply(code: Code, message: string): Reply {
  return create(ReplySchema, { result: { case: "error", value: { code, message } } });
}

/**
 * Runs a handler once: decodes the request and state, gives the handler a
 * context that records its effects, and returns what to commit. Shared by the
 * embedded invoker and `serveFunctions`, so both run handlers the same way.
 */
export async function runInvocation(req: InvocationRequest): Promise<InvocationOutcome> {
  const { fn, handler } = req;
  const journal: CallResult[] = [...req.journal];
  const pending: OutgoingCall[] = [];
  const sends: OutgoingSend[] = [];
  const cancels: CancellationToken[] = [];
  const egress: OutgoingEgress[] = [];
  let callCount = 0;
  // Set when a call's reply could not be had: the handler may catch the error, but its result must not commit.
  let interrupted: { error: unknown } | undefined;
  let suspended = false;
  const canSuspend = req.canSuspend !== false;
  // Ends the wait for the handler's result when it suspends; set while that wait is on.
  let rejectSuspension: (reason: Suspended) => void = () => {};
  let cleared = false;

  // What the handler got or made cannot go through protobuf: no re-run changes that.
  const poisoned = (problem: string, err: unknown): InvocationOutcome => ({
    status: "done",
    reply: errorReply(
      Code.Internal,
      `${fn.typeName}.${handler.name} (key "${req.self.key}"): ${problem}: ${err instanceof Error ? err.message : String(err)}`,
    ),
    effects: noEffects,
    journal,
    poison: true,
  });

  const stateSchema = fn.state as DescMessage | undefined;
  let request: Message;
  let state: Message | undefined;
  try {
    request = req.request ?? fromBinary(handler.method.input, req.payload);
  } catch (err) {
    return poisoned(`the request is not a valid ${handler.method.input.typeName}`, err);
  }
  try {
    if (stateSchema !== undefined) state = req.state !== undefined ? fromBinary(stateSchema, req.state) : create(stateSchema);
  } catch (err) {
    return poisoned(`the stored state is not a valid ${stateSchema?.typeName}; fix the state schema`, err);
  }

  function targetOf(target: AnyFunctionType, method: string, payload: Message): { address: Address; info: HandlerInfo } {
    const info = target.handlers.get(method);
    if (info === undefined) throw new ShoalError(Code.Unimplemented, `${target.typeName} has no handler ${method}`);
    const key = keyOf(info, payload) ?? "";
    if (target.state !== undefined && key === "") {
      throw new ShoalError(
        Code.InvalidArgument,
        `${target.typeName}.${method}: request ${info.method.input.typeName} has an empty key field ${info.keyField?.name ?? "(none)"}`,
      );
    }
    return { address: { type: target.typeName, key }, info };
  }

  function proxy<T>(target: AnyFunctionType, make: (info: HandlerInfo) => T): Record<string, T> {
    return new Proxy({} as Record<string, T>, {
      get(_, prop) {
        if (typeof prop !== "string") return undefined;
        const info = handlerByLocalName(target, prop);
        if (info === undefined) throw new ShoalError(Code.Unimplemented, `${target.typeName} has no handler ${prop}`);
        return make(info);
      },
    });
  }

  async function call(target: AnyFunctionType, info: HandlerInfo, init: unknown): Promise<Message> {
    const n = callCount++;
    const callId = callIdOf(req.invocationId, n);
    const message = create(info.method.input, init as never) as Message;
    const payload = toBinary(info.method.input, message);
    const hash = requestHash(payload);
    const { address } = targetOf(target, info.name, message);
    // Results arrive in any order when calls run in parallel: find this one by its id.
    const recorded = journal[n]?.callId === callId ? journal[n] : journal.find((r) => r.callId === callId);
    let reply: Reply;
    if (recorded !== undefined) {
      if (
        recorded.callId !== callId ||
        recorded.target?.type !== address.type ||
        recorded.target.key !== address.key ||
        recorded.handler !== info.name ||
        !sameBytes(recorded.requestHash, hash)
      ) {
        throw new NonDeterminismError(
          `${formatAddress(req.self)}: call ${callId} was ${recorded.target ? formatAddress(recorded.target) : "?"}.${recorded.handler} ` +
            `with a different request before, now ${formatAddress(address)}.${info.name}; handlers that await calls must make the same calls in the same order when re-run`,
        );
      }
      reply = recorded.reply ?? errorReply(Code.Internal, `call ${callId} has no recorded reply`);
    } else {
      const outgoing: OutgoingCall = {
        callId,
        target: address,
        handler: info.name,
        method: info.method,
        request: message,
        payload,
        requestHash: hash,
        shared: info.shared,
      };
      const issued = req.issueCall(outgoing);
      if (issued === "suspend" && !canSuspend) throw new Error("issueCall suspended an invocation started with canSuspend: false");
      if (issued === "suspend") {
        pending.push(outgoing);
        if (!suspended) {
          suspended = true;
          // Let the handler issue every call it can before suspending (Promise.all).
          setImmediate(() => rejectSuspension(new Suspended()));
        }
        return new Promise<Message>(() => {});
      }
      try {
        reply = await issued;
      } catch (err) {
        interrupted ??= { error: err };
        throw err;
      }
      journal[n] = create(CallResultSchema, { callId, target: address, handler: info.name, requestHash: hash, reply });
    }
    if (reply.result.case === "ok") return fromBinary(info.method.output, reply.result.value);
    const failure = reply.result.value;
    throw new ShoalError(failure?.code ?? Code.Internal, failure?.message ?? "call failed");
  }

  let sendCount = 0;
  let egressCount = 0;
  const log = req.log;
  const ctx: BaseContext & { state?: Message; clearState?: () => void } = {
    key: req.self.key,
    self: req.self,
    caller: req.caller,
    invocationId: req.invocationId,
    log,
    call(target) {
      const t = target as unknown as AnyFunctionType;
      return proxy(t, (info) => (init: unknown) => call(t, info, init)) as never;
    },
    send(target, options?: SendOptions) {
      const t = target as unknown as AnyFunctionType;
      return proxy(t, (info) => (init: unknown) => {
        const message = create(info.method.input, init as never) as Message;
        const { address } = targetOf(t, info.name, message);
        const id = sendId(req.invocationId, sendCount++);
        const delayMs = Math.max(0, Math.round(options?.delay ?? 0));
        sends.push({ id, target: address, handler: info.name, request: message, payload: toBinary(info.method.input, message), delayMs });
        return formatToken({ target: address, messageId: id });
      }) as never;
    },
    cancel(token) {
      cancels.push(token);
    },
    egress(name, schema, message) {
      const m = create(schema, message) as Message;
      egress.push({
        egress: name,
        typeName: schema.typeName,
        message: m,
        payload: toBinary(schema, m as never),
        id: egressId(req.invocationId, egressCount++),
      });
    },
  };
  if (state !== undefined) {
    ctx.state = state;
    if (!handler.shared) {
      ctx.clearState = () => {
        cleared = true;
        ctx.state = create(stateSchema as DescMessage);
      };
    }
  }

  const impl = (req.handlers as Record<string, unknown>)[handler.localName];
  if (typeof impl !== "function") {
    return {
      status: "done",
      reply: errorReply(Code.Unimplemented, `${fn.typeName} has no implementation of ${handler.name}`),
      effects: noEffects,
      journal,
    };
  }

  let result: unknown;
  try {
    const ran = (impl as (r: unknown, c: unknown) => unknown).call(req.handlers, request, ctx);
    // One promise that settles with the handler's result or its suspension, whichever comes
    // first: every invocation that can suspend pays for it, so no race of two promises.
    result = canSuspend
      ? await new Promise((resolve, reject) => {
          rejectSuspension = reject;
          Promise.resolve(ran).then(resolve, reject);
        })
      : await ran;
  } catch (err) {
    if (err instanceof Suspended) return { status: "suspended", pending, journal };
    if (interrupted !== undefined) return { status: "interrupted", error: interrupted.error, journal };
    if (err instanceof ShoalError) return { status: "done", reply: errorReply(err.code, err.message), effects: noEffects, journal };
    if (err instanceof NonDeterminismError)
      return { status: "done", reply: errorReply(Code.Internal, err.message), effects: noEffects, journal };
    return { status: "retry", error: err, journal };
  }
  if (suspended) return { status: "suspended", pending, journal };
  if (interrupted !== undefined) return { status: "interrupted", error: interrupted.error, journal };

  let replyPayload: Uint8Array;
  let output: Message;
  try {
    output = create(handler.method.output, (result ?? {}) as never) as Message;
    replyPayload = req.encodeReply === false ? noBytes : toBinary(handler.method.output, output);
  } catch (err) {
    return poisoned(`the handler returned a value that cannot be encoded as a ${handler.method.output.typeName}`, err);
  }

  let change: StateChange = { kind: "keep" };
  if (stateSchema !== undefined && !handler.shared) {
    let bytes: Uint8Array;
    try {
      bytes = toBinary(stateSchema, ctx.state as Message);
    } catch (err) {
      return poisoned(`the new state cannot be encoded as a ${stateSchema.typeName}`, err);
    }
    if (cleared && bytes.length === 0) change = { kind: "clear" };
    else if (req.state === undefined ? bytes.length > 0 : !sameBytes(bytes, req.state)) change = { kind: "write", bytes };
  }
  return { status: "done", reply: okReply(replyPayload), output, effects: { state: change, sends, cancels, egress }, journal };
}

const noBytes = new Uint8Array(0);

const noEffects: InvocationEffects = { state: { kind: "keep" }, sends: [], cancels: [], egress: [] };

/** A re-run of a handler that made different calls than before. */
export class NonDeterminismError extends Error {
  override name = "NonDeterminismError";
}
